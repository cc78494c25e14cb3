"""hubkiln_spawner: a starting server comes first, then gets a running server's share.

With SystemdSpawner 1.0.2 (the image's pin) and a fake /proc; systemd is not called:
the spawner's commands are recorded instead.
"""

from __future__ import annotations

import asyncio
from pathlib import Path
from types import SimpleNamespace

import pytest

from hubkiln.config.guest import load_module as load

HUB_FILES = Path(__file__).resolve().parents[2] / "provision" / "files" / "hub"
load("hubkiln_hub", HUB_FILES / "hubkiln_hub.py")
spawner_module = load("hubkiln_spawner", HUB_FILES / "hubkiln_spawner.py")


@pytest.mark.parametrize(("stat", "session"), [
    ("4242 (jupyterhub-sin) S 1 4242 4242 0 -1 4194560 3096", 4242),
    ("77 (a (tricky) name) S 1 70 70 0 -1", 70),
    ("9 (x) R 2 9 12 0", 12),
])
def test_the_session_is_read_after_the_processs_name(stat, session):
    assert spawner_module.session_of(stat) == session


def fake_process(proc: Path, pid: int, session: int, nice: str = "0") -> Path:
    folder = proc / str(pid)
    folder.mkdir(parents=True)
    (folder / "stat").write_text(f"{pid} (python3) S 1 {session} {session} 0 -1 0\n")
    (folder / "autogroup").write_text(f"/autogroup-1 nice {nice}\n")
    return folder / "autogroup"


def test_a_session_leader_gets_the_nice(tmp_path, monkeypatch):
    monkeypatch.setattr(spawner_module, "PROC", tmp_path)
    autogroup = fake_process(tmp_path, 4242, 4242)
    assert spawner_module.set_autogroup_nice(4242, -5)
    assert autogroup.read_text() == "-5\n"


def test_a_process_not_yet_in_its_own_session_is_left_alone(tmp_path, monkeypatch):
    monkeypatch.setattr(spawner_module, "PROC", tmp_path)
    autogroup = fake_process(tmp_path, 4242, 1)
    assert not spawner_module.set_autogroup_nice(4242, -5)
    assert autogroup.read_text() == "/autogroup-1 nice 0\n"


def test_no_process_or_no_autogroups_is_no_error(tmp_path, monkeypatch):
    monkeypatch.setattr(spawner_module, "PROC", tmp_path)
    assert not spawner_module.set_autogroup_nice(99, -5)
    (tmp_path / "7").mkdir()
    (tmp_path / "7" / "stat").write_text("7 (x) S 1 7 7 0\n")  # a kernel without autogroups
    assert not spawner_module.set_autogroup_nice(7, -5)


def test_a_starting_server_comes_first_until_it_listens(tmp_path, monkeypatch):
    monkeypatch.setattr(spawner_module, "PROC", tmp_path)
    autogroup = fake_process(tmp_path, 4242, 4242)
    commands, seen_nice = [], []

    async def command_output(*argv):
        commands.append(argv)
        return "4242" if argv[:3] == ("systemctl", "show", "-P") else ""

    async def super_start(self):
        seen_properties.update(self.unit_extra_properties)
        return ("127.0.0.1", 45000)

    answers = iter([False, False, True])

    async def listens(host, port):
        seen_nice.append(autogroup.read_text())
        return next(answers)

    seen_properties: dict = {}
    monkeypatch.setattr(spawner_module, "command_output", command_output)
    monkeypatch.setattr(spawner_module, "listens", listens)
    monkeypatch.setattr(spawner_module, "LISTEN_POLL", 0)
    monkeypatch.setattr(spawner_module.SystemdSpawner, "start", super_start)
    spawner = spawner_module.HubkilnSpawner(
        user=SimpleNamespace(name="ada", id=7), unit_extra_properties={"TasksMax": "512"},
        start_timeout=30)

    monkeypatch.setattr(spawner_module, "_queue", None)
    assert asyncio.run(spawner.start()) == ("127.0.0.1", 45000)
    assert seen_properties == {"TasksMax": "512",
                               "CPUWeight": str(spawner_module.STARTING_WEIGHT)}
    assert seen_nice == [f"{spawner_module.STARTING_NICE}\n"] * 3  # while it starts
    assert autogroup.read_text() == "0\n"  # once it listens
    assert commands[-1] == ("systemctl", "set-property", "--runtime",
                            "jupyter-ada-singleuser",
                            f"CPUWeight={spawner_module.RUNNING_WEIGHT}")


def test_the_spawner_names_units_after_the_unix_account():
    spawner = spawner_module.HubkilnSpawner(
        user=SimpleNamespace(name="Ada.Lovelace@uni.example", id=7))
    expected = spawner_module.unix_name("Ada.Lovelace@uni.example")
    assert spawner._expand_user_vars("jupyter-{USERNAME}-{USERID}") == f"jupyter-{expected}-7"


def test_each_user_gets_a_port_of_their_own_below_the_ephemeral_range():
    spawner = spawner_module.HubkilnSpawner(user=SimpleNamespace(name="ada", id=7))
    spawner.port = 45000  # SystemdSpawner.start's random pick
    assert spawner.port == 10007
    ports = {spawner_module.server_port(user_id) for user_id in range(1, 22768)}
    assert len(ports) == 22767 and max(ports) < 32768 and min(ports) > 10000



def test_servers_start_in_turn_in_the_order_asked_with_their_place_shown():
    async def run():
        queue = spawner_module.StartQueue(2)
        order, places = [], {}
        gate = asyncio.Event()

        async def spawn(name):
            async with queue.slot(name):
                order.append(name)
                await gate.wait()

        tasks = [asyncio.ensure_future(spawn(name)) for name in "abcde"]
        await asyncio.sleep(0.01)
        places = {name: queue.place(name) for name in "abcde"}
        starting = queue.starting
        gate.set()
        await asyncio.gather(*tasks)
        return order, places, starting, queue.starting

    order, places, starting, after = asyncio.run(run())
    assert order == list("abcde")
    assert places == {"a": -1, "b": -1, "c": 0, "d": 1, "e": 2}  # a and b start at once
    assert (starting, after) == (2, 0)


def test_the_spawn_page_shows_the_place_in_the_queue(monkeypatch):
    monkeypatch.setattr(spawner_module, "QUEUE_UPDATE", 0.01)

    async def run():
        queue = spawner_module.StartQueue(1)
        monkeypatch.setattr(spawner_module, "_queue", queue)
        spawner = spawner_module.HubkilnSpawner(user=SimpleNamespace(name="bo", id=2))
        release = asyncio.Event()

        async def first():
            async with queue.slot("first"):
                await release.wait()

        async def second():
            async with queue.slot(spawner):
                pass

        tasks = [asyncio.ensure_future(first())]
        await asyncio.sleep(0.01)
        tasks.append(asyncio.ensure_future(second()))
        await asyncio.sleep(0.01)
        messages = []
        async for event in spawner.progress():
            messages.append(event["message"])
            release.set()
        await asyncio.gather(*tasks)
        return messages

    assert asyncio.run(run()) == ["Waiting for a free start slot: yours is next",
                                  "Starting your server..."]


def test_a_server_that_dies_at_start_gives_its_slot_back(monkeypatch):
    async def never_listens(host, port):
        return False

    async def dead(self):
        return 1  # SystemdSpawner.poll: the unit is not running

    monkeypatch.setattr(spawner_module, "listens", never_listens)
    monkeypatch.setattr(spawner_module, "LISTEN_POLL", 0.01)
    monkeypatch.setattr(spawner_module, "UNIT_POLL", 0.05)
    monkeypatch.setattr(spawner_module.SystemdSpawner, "poll", dead)

    async def command_output(*argv):
        return ""

    monkeypatch.setattr(spawner_module, "command_output", command_output)
    spawner = spawner_module.HubkilnSpawner(user=SimpleNamespace(name="cy", id=3),
                                            start_timeout=300)

    async def run():
        loop = asyncio.get_running_loop()
        began = loop.time()
        await spawner._settle_once_listening(("127.0.0.1", 10003), 0)
        return loop.time() - began

    assert asyncio.run(run()) < 1.0  # not the 300 s of start_timeout

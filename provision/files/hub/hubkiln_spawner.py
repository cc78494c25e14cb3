"""The students' spawner: SystemdSpawner with hubkiln's Unix names and start priority.

Installed into the hub's environment by provision/50-hub-config.sh; used by
/etc/hubkiln/jupyterhub_config.py. At class start, a whole class asks for servers
while the first ones already run kernels that import the course's packages. Left
alone, the scheduler shares the CPU evenly between them, every spawn waits behind
every import, and nobody gets a server soon (issue 14: spawn p95 96 s for 60
students on 2 cores). So a server that is starting comes first, until it listens:
- under cgroup v2's cpu controller (the image in a VM), its unit starts with
  CPUWeight=STARTING_WEIGHT and drops to RUNNING_WEIGHT (systemd's default);
- where the kernel schedules by autogroup instead (no cpu controller in use, as
  in a container on a cgroup v1 host), each session gets an equal share whatever
  its processes' nice values: the server's session (its unit's) starts at
  autogroup nice STARTING_NICE and goes back to 0. Kernels run in sessions of
  their own (jupyter_client starts them so) at nice 10 (hubkiln-kernel, from the
  kernelspec); the hub, its proxy and the front are at -20
  (hubkiln-class-priority.conf), so logins still come first.
Neither lasts longer than the spawn's start_timeout, and a student can change
neither. Where autogroups are off or missing, setting one is skipped quietly.

Servers also start a few at a time (START_SLOTS per CPU), in the order they were
asked for: sharing the CPU among every server that starts at once made each of them
slow (spawn p50 33 s for 60 students), while in turn the first ones are up in
seconds. A student waiting for a slot sees their place in the queue on the spawn
page (the hub's progress stream), and the wait counts toward start_timeout.

Each server listens on a port of its own, SERVER_PORTS + the hub's id of the user,
below the kernel's range of ephemeral ports (32768-60999): SystemdSpawner's random
pick from that range raced the 5 ports of every kernel and every outgoing
connection, and at class start one in 60 servers found its port taken ("port ... is
not available") and the spawn failed after 300 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from pathlib import Path

from hubkiln_hub import unix_name
from systemdspawner import SystemdSpawner
from traitlets import validate

#: Autogroup nice of a starting server's session (a kernel's is 10, the hub's -20): an
#: autogroup's weight grows by about 1.25 a step, so -15 weighs about 28 kernels.
STARTING_NICE = -15
#: cgroup v2 CPU weights of a server's unit: while it starts, then once it listens.
STARTING_WEIGHT, RUNNING_WEIGHT = 400, 100
#: Seconds between two looks at whether a starting server listens, and at its unit.
LISTEN_POLL, UNIT_POLL = 0.25, 1.0
#: How many servers start at once, per CPU.
START_SLOTS = 2
#: Seconds between two queue messages on a waiting student's spawn page.
QUEUE_UPDATE = 2.0
PROC = Path("/proc")
#: Students' servers listen on SERVER_PORTS + user id, below the ephemeral ports.
SERVER_PORTS, EPHEMERAL_PORTS = 10000, 32768


def server_port(user_id: int) -> int:
    """The port of the user's server (pure): unique per user while ids stay below
    EPHEMERAL_PORTS - SERVER_PORTS (22768 users), then they wrap."""
    return SERVER_PORTS + user_id % (EPHEMERAL_PORTS - SERVER_PORTS)


def session_of(stat: str) -> int:
    """The session id in a /proc/PID/stat line (pure): the 4th field after the name,
    which is in parentheses and may itself hold spaces and parentheses."""
    return int(stat[stat.rindex(")") + 1:].split()[3])


def set_autogroup_nice(pid: int, nice: int) -> bool:
    """Give the session of `pid` the autogroup nice `nice`; False where the kernel has
    no autogroups, the process is gone or leads no session (yet: the autogroup would
    be the one it leaves), or the write is refused."""
    try:
        autogroup = PROC / str(pid) / "autogroup"
        if not autogroup.exists() or session_of((PROC / str(pid) / "stat").read_text()) != pid:
            return False
        autogroup.write_text(f"{nice}\n")
    except (OSError, ValueError, IndexError):
        return False
    return True


async def command_output(*argv: str) -> str:
    process = await asyncio.create_subprocess_exec(
        *argv, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.DEVNULL)
    return (await process.communicate())[0].decode(errors="replace").strip()


async def listens(host: str, port: int) -> bool:
    with contextlib.suppress(OSError):
        _, writer = await asyncio.open_connection(host, port)
        writer.close()
        with contextlib.suppress(OSError):
            await writer.wait_closed()
        return True
    return False


class StartQueue:
    """Servers that start at once, in the order they were asked for (FIFO)."""

    def __init__(self, slots: int):
        self.slots, self.starting = slots, 0
        self.waiting: list[object] = []
        self.changed = asyncio.Condition()

    def place(self, who: object) -> int:
        """How many wait before `who` (0: next), or -1 when `who` is not waiting."""
        return self.waiting.index(who) if who in self.waiting else -1

    @contextlib.asynccontextmanager
    async def slot(self, who: object):
        async with self.changed:
            self.waiting.append(who)
            try:
                await self.changed.wait_for(
                    lambda: self.starting < self.slots and self.waiting[0] is who)
            finally:
                self.waiting.remove(who)
                self.changed.notify_all()
            self.starting += 1
        try:
            yield
        finally:
            async with self.changed:
                self.starting -= 1
                self.changed.notify_all()


_queue: StartQueue | None = None


def start_queue() -> StartQueue:
    """The hub's one queue (made in the hub's event loop, at the first spawn)."""
    global _queue
    if _queue is None:
        _queue = StartQueue(START_SLOTS * (os.cpu_count() or 1))
    return _queue


class HubkilnSpawner(SystemdSpawner):
    """SystemdSpawner whose {USERNAME} is the Unix account (hubkiln_hub.unix_name), and
    whose servers start in turn and come first while they start (see the module's
    docstring)."""

    def _expand_user_vars(self, string):
        return string.format(USERNAME=unix_name(self.user.name), USERID=self.user.id)

    @validate("port")
    def _own_port(self, proposal):
        """Whatever port SystemdSpawner picks (a random one), the user's own."""
        if not proposal["value"]:  # 0: not chosen yet
            return 0
        return server_port(self.user.id)

    async def start(self):
        async with start_queue().slot(self):
            self.unit_extra_properties = {**self.unit_extra_properties,
                                          "CPUWeight": str(STARTING_WEIGHT)}
            address = await super().start()
            if address:
                pid = int(await command_output("systemctl", "show", "-P", "MainPID",
                                               self.unit_name) or 0)
                boosted = False
                for _ in range(20):  # the unit's process makes its session after the fork
                    if pid <= 0 or (boosted := set_autogroup_nice(pid, STARTING_NICE)):
                        break
                    await asyncio.sleep(0.05)
                await self._settle_once_listening(address, pid if boosted else 0)
        return address

    async def progress(self):
        """The spawn page's messages: the place in the start queue while waiting."""
        queue, said = start_queue(), None
        while (place := queue.place(self)) >= 0:
            if place != said:
                ahead = "yours is next" if place == 0 else \
                    f"{place} server{'s' if place > 1 else ''} start before yours"
                yield {"progress": 10, "message": f"Waiting for a free start slot: {ahead}"}
                said = place
            await asyncio.sleep(QUEUE_UPDATE)
        yield {"progress": 50, "message": "Starting your server..."}

    async def _settle_once_listening(self, address: tuple[str, int], pid: int) -> None:
        """Back to a running server's share once it listens, its unit stops (a server
        that dies at start must not hold a start slot) or start_timeout is over."""
        loop = asyncio.get_running_loop()
        deadline, looked = loop.time() + self.start_timeout, loop.time()
        while loop.time() < deadline and not await listens(*address):
            if loop.time() - looked >= UNIT_POLL:
                looked = loop.time()
                if await self.poll() is not None:  # the unit is no longer running
                    break
            await asyncio.sleep(LISTEN_POLL)
        if pid:
            set_autogroup_nice(pid, 0)
        await command_output("systemctl", "set-property", "--runtime", self.unit_name,
                             f"CPUWeight={RUNNING_WEIGHT}")

"""A local try of a built image: `invoke launch` boots it in qemu with launch settings.

The image boots from a throwaway snapshot with a NoCloud seed of the settings
(hubkiln/deliver/seed.py), forwards the hub's HTTPS and SSH to ports on 127.0.0.1,
waits for the login page and prints how to log in. A data disk (qcow2) may hold
/home: it outlives the VM, so the next term's image keeps the students' work
(docs/new-term.md). Ctrl-C or SIGTERM powers the VM off.
"""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from hubkiln.config.guest import settings as guest_settings
from hubkiln.config.launch import (
    OAUTH_NEEDS,
    Launch,
    LaunchError,
    check_launch_for_profile,
    demo_launch,
    load_launch,
)
from hubkiln.config.profile import (
    Profile,
    display_path,
    load_profile,
    show,
)
from hubkiln.deliver.seed import Credentials, issue_credentials, write_seed
from hubkiln.errors import BuildError, HubkilnError
from hubkiln.machine import nocloud
from hubkiln.machine.accel import choose_accelerator
from hubkiln.machine.vm import Vm, VmSpec, create_data_disk_command, free_port
from hubkiln.paths import OUTPUT_DIR, output_dir
from hubkiln.proc import run
from hubkiln.progress import Progress, format_seconds
from hubkiln.stages.artifacts import read_manifest


def local_launch(launch: Launch) -> tuple[Launch, list[str]]:
    """Settings for a VM on this machine: no domain (Let's Encrypt cannot reach it)."""
    if not launch["domain"]:
        return launch, []
    data = {**launch.data, "domain": None, "acme_email": None, "acme_ca": None,
            "acme_ca_root": None}
    note = (f"local launch: ignoring domain {launch['domain']} (Let's Encrypt cannot reach a "
            "VM on this machine); the hub uses a self-signed certificate")
    return Launch(data=data, source=launch.source), [note]


def login_url(https_port: int) -> str:
    return f"https://127.0.0.1:{https_port}/hub/login"


def login_instructions(authenticator: str, launch: Launch, https_port: int,
                       credentials: Credentials | None = None) -> list[str]:
    """How to log in to a local launch, for the terminal."""
    roster = ", ".join(launch["users"][:5]) + (", ..." if len(launch["users"]) > 5 else "")
    admins = ", ".join(launch["admins"]) or "none"
    callback = f"https://127.0.0.1:{https_port}/hub/oauth_callback"
    issued = credentials or Credentials({}, {})
    admin_lines = [f"admin {name}: password {password}"
                   for name, password in issued.admin_passwords.items()]
    code_lines = [f"student {name}: enrolment code {code}"
                  for name, code in list(issued.enrolment_codes.items())[:5]]
    first_login = ("with the enrolment code below, and choose a password"
                   if launch["enrolment_codes"] else "and choose a password")
    lines = {
        "firstuse": [f"students log in with a roster name ({roster or 'none'}) {first_login} "
                     f"at that first login; admins ({admins}) with their password",
                     *admin_lines, *code_lines],
        "native": ["students sign up on the login page and wait for an admin's approval "
                   f"(admins: {admins}, who log in with their password)", *admin_lines],
        "github": [f"log in with GitHub; for a local test register {callback} as the "
                   "OAuth app's callback URL"],
        "google": [f"log in with Google; for a local test register {callback} as an "
                   "authorized redirect URI"],
        "generic-oauth": [f"log in with your provider; for a local test register {callback} "
                          "as a redirect URI"],
        "lti13": ["log in by launching the tool from your LMS (not possible on a local VM)"],
    }
    return lines.get(authenticator, [f"log in with {authenticator}"])


def ssh_instructions(launch: Launch, ssh_port: int, key: Path | None) -> str | None:
    """The command an admin uses to reach the local VM over SSH, or None without keys."""
    if not launch["admins"] or not (launch["ssh_authorized_keys"] or key):
        return None
    identity = f"-i {display_path(key)} " if key else ""
    operator = guest_settings().operator_name(launch["admins"][0])
    return (f"ssh {identity}-p {ssh_port} -o StrictHostKeyChecking=no "
            f"-o UserKnownHostsFile=/dev/null {operator}@127.0.0.1")


def login_page_answers(url: str, timeout: float = 10) -> bool:
    """True when `url` answers 2xx over HTTPS. The certificate is not checked: local only."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    # No proxy: the environment's proxy settings must not capture a local address.
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}),
                                         urllib.request.HTTPSHandler(context=context))
    try:
        with opener.open(url, timeout=timeout) as response:
            return 200 <= response.status < 300
    except (urllib.error.URLError, OSError, ssl.SSLError, ValueError):
        return False  # not up yet: connection refused, reset, TLS not ready, HTTP error


def check_port_free(port: int, option: str) -> None:
    """Raise when 127.0.0.1:`port` is taken, naming the option that chose it."""
    with socket.socket() as sock:
        try:
            sock.bind(("127.0.0.1", port))
        except OSError as exc:
            raise HubkilnError(f"port {port} on 127.0.0.1 is not free ({exc.strerror})",
                               hint=f"choose another with {option}, or leave it out to pick "
                               "a free one") from None


def find_built_image(profile: Profile, profile_ref: str, output_root: Path | None = None) -> Path:
    """The qcow2 image that the last build of `profile` left; raise with a hint if none."""
    out = output_dir(profile, output_root or OUTPUT_DIR)
    hint = f"run `invoke build --profile={profile_ref}` first"
    manifest = read_manifest(out)
    if manifest is None:
        raise BuildError(f"no built image for the profile {show(profile.name)} "
                         f"({display_path(out / 'manifest.json')} is missing)", hint=hint)
    files = [f for f in manifest.get("files", []) if f.get("format") == "qcow2"]
    if not files:
        raise BuildError(f"the build in {display_path(out)} has no qcow2 image",
                         hint="add qcow2 to the profile's outputs.formats, then " + hint)
    image = out / files[0]["name"]
    if not image.is_file():
        raise BuildError(f"{display_path(image)} (named by the manifest) is missing", hint=hint)
    return image


@contextlib.contextmanager
def interrupted_by_signals() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt, so the VM is always stopped."""
    def handler(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    previous = {sig: signal.signal(sig, handler) for sig in (signal.SIGTERM, signal.SIGHUP)}
    try:
        yield
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def boot_locally(
    profile: Profile,
    profile_ref: str,
    launch: Launch | None,
    *,
    https_port: int | None = None,
    ssh_port: int | None = None,
    accelerator: str | None = None,
    timeout: float = 900,
    say: Callable[[str], None] = print,
    output_root: Path | None = None,
    data_disk: Path | None = None,
) -> None:
    """Boot the profile's built image with `launch` (or the demo), wait for the login page,
    print how to use it, and run until Ctrl-C; the VM is always stopped.

    With `data_disk` (a qcow2 file, made blank when missing) /home lives on that
    disk and outlives the VM: boot a newer image with the same file to keep the work."""
    image = find_built_image(profile, profile_ref, output_root)
    work = output_dir(profile, output_root or OUTPUT_DIR) / "launch"
    demo_key: Path | None = None
    if launch is None:
        launch = demo_launch()
        work.mkdir(parents=True, exist_ok=True)
        demo_key = work / "demo-key"
        public = demo_key.with_name("demo-key.pub")
        line = public.read_text().strip() if demo_key.exists() and public.exists() else \
            nocloud.make_ssh_key(demo_key, "hubkiln-demo")
        launch = Launch(data={**launch.data, "ssh_authorized_keys": [line]})
        say("no --config given: using the built-in demo settings (admin `teacher`, students "
            "`student1`, `student2`, SSH key " + display_path(demo_key) + ")")
    auth = profile["hub"]["authenticator"]
    if auth in OAUTH_NEEDS:
        raise HubkilnError(
            f"the profile {show(profile.name)} logs in with {auth}, which cannot work on a VM "
            "on this machine: the provider sends users back to https://DOMAIN/hub/oauth_callback",
            hint="launch it where its domain points (docs/launch.md), or try a profile that "
            "logs in with firstuse or native")
    problems = check_launch_for_profile(launch, profile)
    if problems:
        raise LaunchError(problems)
    launch, notes = local_launch(launch)
    for note in notes:
        say(note)
    launch, credentials = issue_credentials(launch)
    for port, option in ((https_port, "--https-port"), (ssh_port, "--ssh-port")):
        if port:
            check_port_free(port, option)
    https_port, ssh_port = https_port or free_port(), ssh_port or free_port()
    choice = choose_accelerator(accelerator)
    work.mkdir(parents=True, exist_ok=True)
    serial_log = work / "serial.log"
    if data_disk is not None:
        say(ensure_data_disk(data_disk))
    url = login_url(https_port)
    progress = Progress()
    with tempfile.TemporaryDirectory(prefix="hubkiln-launch-") as tmp, interrupted_by_signals():
        iso = Path(tmp) / "seed.iso"
        write_seed(launch, iso=iso)  # holds the settings' secrets: removed with `tmp`
        serial_log.unlink(missing_ok=True)
        spec = VmSpec(image=image, seed_iso=iso, serial_log=serial_log,
                      accelerator=choice.name, forwards={443: https_port, 22: ssh_port},
                      data_disk=data_disk)
        try:
            with Vm(spec) as vm:
                say(f"booting {display_path(image)} on a snapshot ({choice.name}: "
                    f"{choice.reason}); console log: {display_path(serial_log)}")
                waited = wait_for_login_page(vm, url, timeout, progress)
                say(f"the hub answers after {format_seconds(waited)}: "
                    f"https://127.0.0.1:{https_port}/")
                say("  the certificate is self-signed: your browser warns; accept it for "
                    "this local test")
                for line in login_instructions(profile["hub"]["authenticator"], launch,
                                               https_port, credentials):
                    say(f"  {line}")
                if command := ssh_instructions(launch, ssh_port, demo_key):
                    say(f"  admin shell: {command}")
                for line in stop_instructions(data_disk):
                    say(line)
                while vm.alive():
                    time.sleep(1)
                say("the VM stopped by itself")
        except KeyboardInterrupt:
            say("stopped the VM")


#: Size of a data disk that `invoke launch --data-disk` makes (qcow2: it grows as used).
DATA_DISK_SIZE = "10G"


def ensure_data_disk(disk: Path, size: str = DATA_DISK_SIZE) -> str:
    """Make a blank qcow2 data disk at `disk` unless one is there; say what was done."""
    if not disk.exists():
        disk.parent.mkdir(parents=True, exist_ok=True)
        run(create_data_disk_command(disk, size),
            hint="check that the folder is writable and has room")
        return (f"made a blank {size} data disk {display_path(disk)}: the image formats it "
                "and puts /home on it")
    info = json.loads(run(["qemu-img", "info", "--output=json", "--force-share", str(disk)],
                          hint=f"is {display_path(disk)} a disk image?"))
    if info.get("format") != "qcow2":
        raise HubkilnError(f"{display_path(disk)} is a {info.get('format')} image, not qcow2",
                           hint="convert it: qemu-img convert -O qcow2 FILE NEW.qcow2")
    return f"data disk {display_path(disk)} (kept as it is: /home with the students' work)"


def stop_instructions(data_disk: Path | None) -> list[str]:
    """What stopping the local VM keeps."""
    if data_disk is None:
        return ["press Ctrl-C to stop the VM (it runs on a snapshot: nothing it changes "
                "is kept)"]
    return [f"press Ctrl-C to stop the VM: the OS disk runs on a snapshot (its changes are "
            f"lost), /home stays on {display_path(data_disk)}",
            "  for a clean stop, power it off from inside (sudo poweroff); the next launch "
            "with the same --data-disk keeps the students' work"]


def launch_profile(profile_ref: str, *, config: str | None, https_port: int, ssh_port: int,
                   accelerator: str | None, timeout: float,
                   data_disk: str | None = None) -> None:
    """`invoke launch`: load the profile and the launch file, then boot_locally."""
    profile = load_profile(profile_ref)
    settings = load_launch(config) if config else None
    boot_locally(profile, profile_ref, settings, https_port=https_port or None,
                 ssh_port=ssh_port or None, accelerator=accelerator, timeout=timeout,
                 data_disk=Path(data_disk).resolve() if data_disk else None)


def console_tail(vm: Any) -> str:
    """The end of the guest's console, or a note when it printed nothing."""
    text = vm.serial_tail().strip()
    return text if text and text != "(no serial output)" else "(nothing: the guest printed no " \
        "console output; is the image bootable?)"


def qemu_output(vm: Any) -> str:
    """What qemu itself printed (e.g. a refused disk option), as ` (qemu: ...)`, or ''."""
    text = vm.output() if hasattr(vm, "output") else ""
    return f" (qemu: {text[-500:]})" if text else ""


def wait_for_login_page(vm: Any, url: str, timeout: float, progress: Any) -> float:
    """Poll `url` until it answers; return seconds waited. Raise with the console's tail."""
    started = time.monotonic()
    last_line = ""
    with progress.stage("launch", f"boot and wait for {url}"):
        while time.monotonic() - started < timeout:
            if not vm.alive():
                said = qemu_output(vm)
                raise BuildError(f"the VM stopped before the hub answered{said}; the console "
                                 f"ended with:\n{console_tail(vm)}",
                                 hint=f"see the whole console log in {vm.spec.serial_log}")
            if login_page_answers(url, timeout=10):
                return time.monotonic() - started
            line = vm.serial_tail(1).strip()
            if line and line != last_line and line != "(no serial output)":
                progress.detail(line)
                last_line = line
            time.sleep(5)
        raise BuildError(
            f"the login page {url} did not answer within {timeout:.0f}s; the console ended "
            f"with:\n{console_tail(vm)}",
            hint=f"see the whole console log in {vm.spec.serial_log}; a slow machine (TCG) may "
            "need a longer --timeout",
        )

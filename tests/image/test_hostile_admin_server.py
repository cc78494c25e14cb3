"""A web session gives no root path: an admin's own hub server cannot plant an SSH key,
touch the SSH account's files, use sudo or change the SSH and sudo configuration.

Plays the attacker who holds an admin's web session (a stolen or guessed hub password):
from a kernel of that admin's own server (a notebook or terminal is the same process
tree) they write keys into every file stock sshd reads, write the SSH account's shell
start-up files, and try sudo. Expected, from what hubkiln declares: the admin's SSH
account is `operator_name(admin)` (`teacher-admin`), a different Unix account whose
keys live only in the root-owned /etc/ssh/hubkiln-keys/. The proof that each probe is
live: the planted key does log in once root puts it in that root-owned file, and root's
own writes to the same folders succeed.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from hubkiln.config.guest import settings as guest_settings

KEYS_DIR = "/etc/ssh/hubkiln-keys"


def ssh_as(user: str, key: Path, port: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["ssh", "-i", str(key), "-p", port, "-o", "BatchMode=yes", "-o", "IdentitiesOnly=yes",
         "-o", "StrictHostKeyChecking=no", "-o", "UserKnownHostsFile=/dev/null",
         "-o", "ControlPath=none", "-o", "ConnectTimeout=30", "-o", "LogLevel=ERROR",
         f"{user}@127.0.0.1", "id -un"], capture_output=True, text=True, timeout=120)


@pytest.fixture(scope="module")
def planted_key(tmp_path_factory) -> tuple[Path, str]:
    folder = tmp_path_factory.mktemp("planted")
    key = folder / "planted"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "planted",
                    "-f", str(key)], check=True)
    return key, (folder / "planted.pub").read_text().strip()


@pytest.fixture(scope="module")
def admin(launch) -> str:
    admins = list(launch.get("admins") or [])
    if not admins:
        pytest.skip("no admin in the launch settings")
    return admins[0]


@pytest.fixture(scope="module")
def admin_kernel(admin, hub_client, credentials, login_and_start, open_kernel):
    """A kernel of the admin's own server, logged in with the settings' login (the form
    with the admin's issued password, or the login provider)."""
    session = login_and_start(hub_client(), admin, credentials.admin_password(admin))
    kernel = open_kernel(session)
    yield kernel
    kernel.shutdown()
    api = {"X-XSRFToken": session.client.cookie("_xsrf", "/hub") or ""}
    session.client.request("DELETE", f"/hub/api/users/{admin}/server", headers=api)


def test_the_admins_server_runs_as_an_account_without_sudo_or_ssh(admin_kernel, admin, host):
    run = admin_kernel.execute("import os, pwd; print(pwd.getpwuid(os.getuid()).pw_name)")
    assert run.error is None, run.error
    assert run.stdout.strip() == admin
    groups = set(host.user(admin).groups)
    assert not {"sudo", "hubkiln-admins"} & groups, groups
    assert guest_settings().operator_name(admin) != admin


def test_a_key_planted_by_the_admins_server_opens_no_ssh(admin_kernel, admin, planted_key,
                                                         host, journal):
    port = os.environ.get("HUBKILN_TEST_SSH_PORT")
    if not port:
        pytest.skip("needs HUBKILN_TEST_SSH_PORT (the guest's 22 as the tests reach it)")
    key, public = planted_key
    operator = guest_settings().operator_name(admin)
    operator_home = host.user(operator).home
    run = admin_kernel.execute(
        "import os, json\n"
        f"public, operator_home = {public!r}, {operator_home!r}\n"
        "home = os.path.expanduser('~')\n"
        "os.makedirs(home + '/.ssh', mode=0o700, exist_ok=True)\n"
        "for name in ('authorized_keys', 'authorized_keys2'):\n"
        "    with open(f'{home}/.ssh/{name}', 'a') as f:\n"
        "        f.write(public + '\\n')\n"
        "result = {}\n"
        "for path in (operator_home + '/.ssh/authorized_keys', operator_home + '/.bashrc',\n"
        "             operator_home + '/.profile', f'{KEYS}/{OPERATOR}'):\n"
        "    try:\n"
        "        with open(path, 'a') as f:\n"
        "            f.write('sudo -n touch /root/pwned\\n')\n"
        "        result[path] = 'WROTE'\n"
        "    except OSError as error:\n"
        "        result[path] = error.errno\n"
        "print(json.dumps(result))\n".replace("{KEYS}", KEYS_DIR).replace("{OPERATOR}", operator))
    assert run.error is None, run.error
    assert "WROTE" not in run.stdout, (
        f"the admin's server wrote a file of the SSH account {operator}: {run.stdout}")
    try:
        for user in (admin, operator):
            refused = ssh_as(user, key, port)
            assert refused.returncode != 0 and refused.stdout.strip() != user, (
                f"a key that the admin's server planted logs in as {user}"
                + journal("ssh.service"))
        # The probe is live: the same key in the SSH account's root-owned file logs in.
        keys_file = f"{KEYS_DIR}/{operator}"
        assert host.file(keys_file).user == "root" and host.file(keys_file).mode == 0o644
        host.run(f"cp -p {keys_file} {keys_file}.hubkiln-test && "
                 f"echo '{public}' >> {keys_file}")
        accepted = ssh_as(operator, key, port)
        assert accepted.returncode == 0 and accepted.stdout.strip() == operator, (
            f"the key does not log in even from {keys_file}: {accepted.stderr}"
            + journal("ssh.service"))
    finally:
        host.run(f"test -e {KEYS_DIR}/{operator}.hubkiln-test && "
                 f"mv -f {KEYS_DIR}/{operator}.hubkiln-test {KEYS_DIR}/{operator}")
        home = host.user(admin).home
        host.run(f"rm -f {home}/.ssh/authorized_keys {home}/.ssh/authorized_keys2")
    assert not host.file("/root/pwned").exists


def test_sshd_reads_keys_and_login_scripts_only_from_root(host, admin):
    operator = guest_settings().operator_name(admin)
    config = host.run(f"sshd -T -C user={operator},host=h,addr=127.0.0.1").stdout.lower()
    assert f"authorizedkeysfile {KEYS_DIR}/%u\n" in config, config
    assert "permituserrc no\n" in config and "permituserenvironment no\n" in config
    folder = host.file(KEYS_DIR)
    assert folder.user == "root" and folder.mode == 0o755


def test_the_admins_server_cannot_become_root(admin_kernel, host):
    run = admin_kernel.execute(
        "import os, subprocess\n"
        "print('uid', os.getuid())\n"
        "r = subprocess.run(['sudo', '-n', 'id', '-u'], capture_output=True, text=True)\n"
        "print('sudo', r.returncode, r.stdout.strip())\n"
        f"for path in ('/etc/sudoers.d/x', '{KEYS_DIR}/x', '/etc/ssh/sshd_config.d/x.conf'):\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print('WROTE', path)\n"
        "    except OSError as error:\n"
        "        print('denied', path, error.errno)\n")
    assert run.error is None, run.error
    lines = run.stdout.splitlines()
    assert lines[0] != "uid 0", "the admin's server runs as root"
    assert lines[1] != "sudo 0 0", f"sudo works from the admin's server: {lines[1]}"
    assert not [line for line in lines if line.startswith("WROTE")], run.stdout
    assert sum(line.startswith("denied") for line in lines) == 3, run.stdout
    # The probe is live: root can write there (and the test cleans up).
    assert host.run(f"touch {KEYS_DIR}/x && rm -f {KEYS_DIR}/x").rc == 0

"""Students share no memory: each server has its own /dev/shm, /dev/mqueue and IPC
namespace, so one student's shared-memory files, POSIX queues and System V segments are
invisible to another.

Plays two students' kernels (their real servers, driven through the front). The first
writes a world-readable file to /dev/shm (umask 022, as Python's multiprocessing and
many libraries do) and opens a System V segment; the second looks for both. The proof
that the probe is live: the first student's own kernel sees what it wrote.
"""

from __future__ import annotations

import json

import pytest


@pytest.fixture(scope="module")
def kernels(settings, student, log_in, open_kernel):
    users = [u for u in settings["users"] if u != student.name]
    if not users:
        pytest.skip("needs two students on the roster")
    other = log_in(users[0])
    first, second = open_kernel(student), open_kernel(other)
    yield first, second
    first.shutdown()
    second.shutdown()


WRITE = """
import os, json, subprocess
os.umask(0o022)
with open('/dev/shm/hubkiln-probe', 'w') as f:
    f.write('secret of ' + os.environ.get('USER', '?'))
ipc = subprocess.run(['ipcmk', '-M', '4096'], capture_output=True, text=True)
print(json.dumps({'shm': sorted(os.listdir('/dev/shm')), 'ipcmk': ipc.returncode,
                  'ipcs': subprocess.run(['ipcs', '-m'], capture_output=True,
                                         text=True).stdout}))
"""

LOOK = """
import os, json, subprocess
print(json.dumps({'shm': sorted(os.listdir('/dev/shm')),
                  'mqueue': sorted(os.listdir('/dev/mqueue')) if os.path.isdir('/dev/mqueue')
                  else [],
                  'ipcs': subprocess.run(['ipcs', '-m'], capture_output=True,
                                         text=True).stdout,
                  'dev': os.stat('/dev/shm').st_dev}))
"""


def test_one_students_shared_memory_is_invisible_to_another(kernels, host, student):
    first, second = kernels
    wrote = first.execute(WRITE)
    assert wrote.error is None, wrote.error
    mine = json.loads(wrote.stdout)
    assert "hubkiln-probe" in mine["shm"], f"the probe is not live: {mine}"
    assert mine["ipcmk"] == 0 and "0x" in mine["ipcs"], f"no System V segment made: {mine}"
    looked = second.execute(LOOK)
    assert looked.error is None, looked.error
    theirs = json.loads(looked.stdout)
    assert "hubkiln-probe" not in theirs["shm"], (
        f"the other student sees {student.name}'s /dev/shm file: {theirs['shm']}")
    assert student.name not in theirs["ipcs"], (
        f"the other student sees {student.name}'s System V segment:\n{theirs['ipcs']}")
    assert theirs["mqueue"] == [], f"the other student sees queues: {theirs['mqueue']}"
    # Nor does the host's own /dev/shm hold it: each server has a tmpfs of its own.
    assert host.run("test -e /dev/shm/hubkiln-probe").rc != 0, (
        "the student's /dev/shm file landed in the machine's shared /dev/shm")

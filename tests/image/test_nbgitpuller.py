"""A teacher's nbgitpuller link (docs/content.md: "From a git repository, during the
term") pulls a repository into the student's home, and a second pull after the
teacher's update merges it without losing the student's edits.

The git server is the test's own: `git daemon` on 127.0.0.1 of the network the tests
run in, which the guest shares in the container engine (the VM's guest cannot reach
the test host's loopback: skipped there, with the reason). The link's form is the one
the docs give teachers: /hub/user-redirect/git-pull?repo=...&branch=...&urlpath=...
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.parse
from pathlib import Path

import pytest

GIT_PORT = 9418
TARGET = "course-repo"


def git(*args: str, cwd: Path) -> None:
    subprocess.run(["git", "-c", "user.name=Teacher", "-c", "user.email=t@uni.test",
                    "-c", "init.defaultBranch=main", *args], cwd=cwd, check=True,
                   capture_output=True, text=True)


@pytest.fixture(scope="module")
def teacher_repo(tmp_path_factory):
    """The teacher's repository, served by `git daemon`: (the working copy, the URL)."""
    if os.environ.get("HUBKILN_TEST_ENGINE") != "container":
        pytest.skip("the test's git server listens on the test host's loopback, which only "
                    "the container engine's guest shares")
    if not shutil.which("git"):
        pytest.skip("needs git on the test host")
    root = tmp_path_factory.mktemp("git")
    work, served = root / "work", root / "served"
    work.mkdir()
    git("init", cwd=work)
    (work / "lesson.md").write_text("# Lesson 1\n\nExercise: fill in below.\n")
    (work / "data.csv").write_text("x,y\n1,2\n")
    git("add", ".", cwd=work)
    git("commit", "-m", "lesson 1", cwd=work)
    git("clone", "--bare", str(work), str(served / "course.git"), cwd=root)
    git("remote", "add", "served", str(served / "course.git"), cwd=work)
    daemon = subprocess.Popen(["git", "daemon", "--reuseaddr", "--export-all",
                               f"--base-path={served}", "--listen=127.0.0.1",
                               f"--port={GIT_PORT}", str(served)],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline:
        with socket.socket() as probe:
            if probe.connect_ex(("127.0.0.1", GIT_PORT)) == 0:
                break
        time.sleep(0.2)
    else:
        daemon.kill()
        pytest.fail("git daemon did not listen")
    yield work, f"git://127.0.0.1:{GIT_PORT}/course.git"
    daemon.terminate()
    daemon.wait(timeout=10)


def pull(student, repo: str) -> list[dict]:
    """The pull the link's page starts (its event stream, read to the end): the events."""
    query = urllib.parse.urlencode({"repo": repo, "branch": "main", "targetpath": TARGET})
    status, _, text = student.client.request(
        "GET", f"/user/{student.name}/git-pull/api?{query}", timeout=180)
    assert status == 200, f"git-pull: HTTP {status}: {text[:300]}"
    return [json.loads(line[len("data: "):]) for line in text.splitlines()
            if line.startswith("data: ")]


def test_the_teachers_link_opens_the_pull_page(student, teacher_repo):
    _, repo = teacher_repo
    link = "/hub/user-redirect/git-pull?" + urllib.parse.urlencode(
        {"repo": repo, "branch": "main", "urlpath": f"lab/tree/{TARGET}/lesson.md"})
    status, _, page, path = student.client.get(link)
    assert status == 200 and path.startswith(f"/user/{student.name}/git-pull"), (status, path)
    assert "git-pull" in page


def test_a_pull_brings_the_material_and_a_second_keeps_the_students_edits(
        host, student, teacher_repo, open_kernel, journal):
    work, repo = teacher_repo
    events = pull(student, repo)
    assert events[-1].get("phase") == "finished", events[-3:] + [journal(
        f"jupyter-{student.name}-singleuser")]
    home = Path(host.user(student.name).home) / TARGET
    lesson = host.file(str(home / "lesson.md"))
    assert lesson.exists and lesson.user == student.name
    assert "Exercise" in lesson.content_string
    # The student answers in the lesson file, from their own kernel.
    kernel = open_kernel(student)
    try:
        done = kernel.execute(f"open('{TARGET}/lesson.md', 'a').write('My answer: 42\\n')")
        assert done.error is None, done.error
    finally:
        kernel.shutdown()
    # The teacher changes the same file, and adds another.
    (work / "lesson.md").write_text("# Lesson 1 (fixed typo)\n\nExercise: fill in below.\n")
    (work / "lesson2.md").write_text("# Lesson 2\n")
    git("add", ".", cwd=work)
    git("commit", "-m", "lesson 2", cwd=work)
    git("push", "served", "main", cwd=work)
    events = pull(student, repo)
    assert events[-1].get("phase") == "finished", events[-3:]
    assert "My answer: 42" in host.file(str(home / "lesson.md")).content_string
    assert host.file(str(home / "lesson2.md")).exists, "the teacher's new lesson was not pulled"
    assert host.file(str(home / "data.csv")).content_string == "x,y\n1,2\n"

"""What each invoke task does, one function per task.

`tasks.py` stays thin: it parses options and calls one function here. Every
function validates the profile first, so nothing is written or built after a
validation error, and raises HubkilnError subclasses that the task turns into
`Exit` with the message and what to do.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from hubkiln.config.profile import Profile, load_profile
from hubkiln.config.reference import update_readme
from hubkiln.errors import BuildError
from hubkiln.paths import CACHE_DIR, OUTPUT_DIR, PROJECT_DIR
from hubkiln.preflight import check_host_tools
from hubkiln.stages import chroot, packer
from hubkiln.stages.render import render_templates

#: Caches of bootstrapped and provisioned root filesystems (git-ignored).

#: Placeholder values that let `packer validate` check cloud sources here;
#: the real ones are given when a cloud build runs.
CLOUD_PLACEHOLDERS = {
    "cloud_region": "placeholder-region-1",
    "cloud_project": "placeholder-project",
    "cloud_resource_group": "placeholder-group",
}


def render(profile_ref: str) -> tuple[Profile, Path]:
    """Validate the profile and render its Packer templates; return the folder."""
    profile = load_profile(profile_ref)
    return profile, render_templates(profile)


def validation_vars(scratch: Path, profile: Profile) -> dict[str, str]:
    """Per-build variables that point at throwaway files, for `packer validate` only."""
    key = scratch / "validate-key"
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-C", "hubkiln-validate", "-f", str(key)],
        check=True,
    )
    seed = scratch / "seed"
    seed.mkdir()
    for name in ("user-data", "meta-data"):
        (seed / name).write_text("#cloud-config\n" if name == "user-data" else "")
    values = {"ssh_private_key_file": str(key), "seed_dir": str(seed)}
    if profile["outputs"]["cloud_builders"]:
        values.update(CLOUD_PLACEHOLDERS)
    return values


def validate(profile_ref: str) -> tuple[Profile, Path]:
    """Render, then run `packer validate` on the rendered folder."""
    check_host_tools(["packer", "ssh-keygen"])
    profile, folder = render(profile_ref)
    with tempfile.TemporaryDirectory(prefix="hubkiln-validate-") as tmp:
        argv = packer.validate_command(folder, vars=validation_vars(Path(tmp), profile))
        result = subprocess.run(argv, capture_output=True, text=True,
                                env={**os.environ, **packer.PACKER_BASE_ENV})
    if result.returncode != 0:
        raise BuildError(
            f"packer validate failed for {folder}:\n{(result.stdout + result.stderr).strip()}",
            hint="fix the template in packer/ or the value in the profile, then run "
            "`invoke validate` again",
        )
    return profile, folder


def update_docs() -> bool:
    """Regenerate the references in README.md and docs/launch.md; True when one changed."""
    changed = update_readme(PROJECT_DIR / "README.md")
    return update_launch_docs() or changed


def clean(*, include_caches: bool) -> list[Path]:
    """Remove output/ (and the cache with `include_caches`); return what was removed."""
    targets = [OUTPUT_DIR] + ([CACHE_DIR] if include_caches else [])
    removed = []
    for target in targets:
        if target.exists():
            shutil.rmtree(target)
            removed.append(target)
    return removed


def build(profile_ref: str, *, accelerator: str | None, verbose: bool,
          validate_image: bool = True, engine: str = "auto",
          loadtest_students: int = 0) -> dict:
    """Validate, then run the whole build of a profile; return its manifest."""
    from hubkiln import proc
    from hubkiln.stages import pipeline as build_module

    proc.VERBOSE = proc.VERBOSE or verbose
    if loadtest_students and not validate_image:
        raise BuildError("--loadtest measures a validated image: drop --skip-validation",
                         hint="or measure later with `invoke loadtest`")
    if loadtest_students:
        from hubkiln.capacity.loadtest import check_arguments

        check_arguments(loadtest_students, 60, 120, "container")
    validate(profile_ref)
    return build_module.build(profile_ref, accelerator=accelerator, validate=validate_image,
                              engine=engine, loadtest_students=loadtest_students)


def test_image(profile_ref: str, *, image: str | None, accelerator: str | None,
               select: str | None = None, engine: str = "auto") -> dict:
    """Boot a built image fresh and run tests/image against it; record the outcome.

    `select` (a pytest -k expression) runs only some tests, and `engine="container"`
    leaves out the tests that need the VM: such partial runs are never recorded in
    manifest.json, which speaks for the whole suite."""
    from hubkiln.paths import output_dir
    from hubkiln.stages import artifacts
    from hubkiln.validation import imagetest

    profile = load_profile(profile_ref)
    out = output_dir(profile)
    manifest = artifacts.read_manifest(out)
    if image is None:
        if manifest is None:
            raise BuildError(f"no built image for {profile.name} in {out}",
                             hint=f"run `invoke build --profile={profile_ref}` first")
        path = out / manifest["files"][0]["name"]
    else:
        path = Path(image)
    with chroot.sigterm_raises():  # SIGTERM powers the test VM off like Ctrl-C
        record = imagetest.validate_image(profile, path, accelerator=accelerator,
                                          pytest_args=["-k", select] if select else None,
                                          engine=engine)
    # A container-only pass proves a part: not recorded. A failure always is.
    partial = record.get("not_run") and record["status"] == "passed"
    if image is None and not select and not partial:
        imagetest.record_validation(out, record)
    if record["status"] != "passed":
        raise BuildError(imagetest.failure_message(record),
                         hint=f"see {out / record['log']}")
    return record


def seed(config: str | None, *, iso: str | None, user_data: str | None,
         profile_ref: str | None) -> list[str]:
    """Check launch settings, then write a NoCloud seed ISO and/or the bare user-data.

    Without `iso` and `user_data`, writes `seed.iso`. Return the lines to print.
    """
    from hubkiln.config import launch
    from hubkiln.errors import HubkilnError

    if not config:
        raise HubkilnError("no launch settings given",
                           hint="name them with --config FILE; start from examples/launch.yaml")
    settings = launch.load_launch(config)
    tls_mode = None
    if profile_ref:
        profile = load_profile(profile_ref)
        problems = launch.check_launch_for_profile(settings, profile)
        if problems:
            raise launch.LaunchError(problems)
        tls_mode = profile["tls"]["mode"]
    iso_path = Path(iso) if iso else (None if user_data else Path("seed.iso"))
    data_path = Path(user_data) if user_data else None
    settings, credentials = launch.issue_credentials(settings)
    written = launch.write_seed(settings, iso=iso_path, user_data=data_path)
    issued = launch.write_credentials(credentials, (iso_path or data_path))
    lines = [f"checked {config}:"] + [f"  {line}" for line in launch.summarize(settings, tls_mode)]
    for path in written:
        what = "NoCloud seed ISO (label cidata): attach it to the VM as a CD-ROM" \
            if path == iso_path else "cloud-config user-data: give it as the cloud's user data"
        lines.append(f"wrote {path} (mode 0600), {what}")
    for path in issued:
        what = "the admins' hub passwords" if path.name.endswith(".txt") else \
            "each student's one-time enrolment code, to hand out (needed at the first login)"
        lines.append(f"wrote {path} (mode 0600): {what}")
    for name, password in credentials.admin_passwords.items():
        lines.append(f"admin {name}: hub password {password} (shown once; only its hash is "
                     "in the seed)")
    lines.append("it holds the settings' secrets and SSH keys: keep it private, "
                 "delete it after the launch")
    lines += [f"note: {note}" for note in
              launch.user_data_notes(launch.render_user_data(settings))]
    return lines


def launch(profile_ref: str, *, config: str | None, https_port: int, ssh_port: int,
           accelerator: str | None, timeout: float, data_disk: str | None = None) -> None:
    """Boot the profile's built image locally with launch settings; run until Ctrl-C."""
    from hubkiln.config import launch as launch_module

    launch_module.launch_profile(profile_ref, config=config, https_port=https_port,
                                 ssh_port=ssh_port, accelerator=accelerator, timeout=timeout,
                                 data_disk=data_disk)


def update_launch_docs() -> bool:
    """Regenerate the launch file reference in docs/launch.md; return True when it changed."""
    from hubkiln.config.launch import update_launch_doc

    return update_launch_doc()

"""What each invoke task does, one function per task.

`tasks.py` stays thin: it parses options and calls one function here. Every
function checks the profile (and the launch settings) first, so nothing is written
or built after a problem is found, and raises HubkilnError subclasses that the task
turns into `Exit` with the message and what to do.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

from hubkiln import docs, proc
from hubkiln.capacity import loadtest
from hubkiln.config import launch as launch_settings
from hubkiln.config.profile import Profile, load_profile
from hubkiln.deliver import local, publish
from hubkiln.deliver import seed as launch_seed
from hubkiln.errors import BuildError, HubkilnError
from hubkiln.paths import CACHE_DIR, OUTPUT_DIR, output_dir
from hubkiln.stages import artifacts, pipeline
from hubkiln.stages.render import check_templates, render_templates
from hubkiln.validation import engines, imagetest, variants


def render(profile_ref: str) -> tuple[Profile, Path]:
    """Check the profile, render its Packer templates and check them with `packer validate`;
    return the profile and the folder."""
    profile = load_profile(profile_ref)
    folder = render_templates(profile)
    check_templates(profile, folder)
    return profile, folder


def update_docs() -> bool:
    """Regenerate the references in README.md and docs/launch.md; True when one changed."""
    changed = docs.update_readme()
    return docs.update_launch_doc() or changed


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
    """Check everything, then run the whole build of a profile; return its manifest."""
    proc.VERBOSE = proc.VERBOSE or verbose
    if loadtest_students and not validate_image:
        raise BuildError("--loadtest measures a validated image: drop --skip-validation",
                         hint="or measure later with `invoke loadtest`")
    if loadtest_students:
        loadtest.check_arguments(loadtest_students, 60, 120, "container")
    profile = load_profile(profile_ref)
    with tempfile.TemporaryDirectory(prefix="hubkiln-check-") as scratch:
        # Checked aside: the current folder's templates stay those of its image.
        check_templates(profile, render_templates(profile, Path(scratch)))
    return pipeline.build(profile_ref, accelerator=accelerator, validate=validate_image,
                          engine=engine, loadtest_students=loadtest_students)


def validate(profile_ref: str, *, image: str | None, accelerator: str | None,
             select: str | None = None, engine: str = "auto",
             variant_ref: str | None = None) -> dict:
    """Boot a built image fresh and run tests/image against it; record the outcome.

    `select` (a pytest -k expression) runs only some tests, and `engine="container"`
    leaves out the tests that need the VM: such partial runs are never recorded in
    manifest.json, which speaks for the whole suite. Nor is a run with a settings
    variant (hubkiln/validation/variants.py), which proves another profile's settings
    on this image; its logs go to logs/variant-NAME/."""
    profile = load_profile(profile_ref)
    variant = variants.load_variant(profile, variant_ref) if variant_ref else None
    if variant and engine == "vm":
        raise HubkilnError("a settings variant boots in the container only",
                           hint="leave out --engine=vm (or say --engine=container)")
    out = output_dir(profile)
    manifest = artifacts.read_manifest(out)
    if image is None:
        if manifest is None:
            raise BuildError(f"no built image for {profile.name} in {out}",
                             hint=f"run `invoke build --profile={profile_ref}` first")
        path = out / manifest["files"][0]["name"]
    else:
        path = Path(image)
    with proc.terminated_by_sigterm():  # SIGTERM powers the test VM off like Ctrl-C
        record = imagetest.validate_image(
            profile, path, accelerator=accelerator, variant=variant,
            pytest_args=["-k", select] if select else None, engine=engine,
            logs=out / "logs" / f"variant-{variant.profile.name}" if variant else None)
    # A container-only pass proves a part: not recorded. A failure always is, but not a
    # variant's: the image was booted with settings it was not built with.
    partial = record.get("not_run") and record["status"] == "passed"
    if image is None and not select and not partial and not variant:
        engines.record_validation(out, record)
    if record["status"] != "passed":
        logs = out / "logs" / (f"variant-{variant.profile.name}" if variant else "")
        raise BuildError(engines.failure_message(record),
                         hint=f"see {logs / Path(record['log']).name}")
    return record


def seed(config: str | None, *, iso: str | None, user_data: str | None,
         profile_ref: str | None) -> list[str]:
    """Check launch settings, then write a NoCloud seed ISO and/or the bare user-data.

    Without `iso` and `user_data`, writes `seed.iso`. Return the lines to print.
    """
    if not config:
        raise HubkilnError("no launch settings given",
                           hint="name them with --config FILE; start from examples/launch.yaml")
    settings = launch_settings.load_launch(config)
    tls_mode = None
    if profile_ref:
        profile = load_profile(profile_ref)
        problems = launch_settings.check_launch_for_profile(settings, profile)
        if problems:
            raise launch_settings.LaunchError(problems)
        tls_mode = profile["tls"]["mode"]
    iso_path = Path(iso) if iso else (None if user_data else Path("seed.iso"))
    return launch_seed.make_seed(settings, config=config, iso=iso_path,
                                 user_data=Path(user_data) if user_data else None,
                                 tls_mode=tls_mode)


def launch(profile_ref: str, *, config: str | None, https_port: int, ssh_port: int,
           accelerator: str | None, timeout: float, data_disk: str | None = None) -> None:
    """Boot the profile's built image locally with launch settings; run until Ctrl-C."""
    local.launch_profile(profile_ref, config=config, https_port=https_port,
                         ssh_port=ssh_port, accelerator=accelerator, timeout=timeout,
                         data_disk=data_disk)


def measure_class_start(profile_ref: str, **options) -> dict:
    """Measure a class start of the profile's image (capacity/loadtest.py)."""
    return loadtest.run_loadtest(profile_ref, **options)


def publish_image(profile_ref: str, **options) -> list[str]:
    """Put the built image into a local libvirt, or say a cloud's exact commands."""
    return publish.publish(profile_ref, **options)

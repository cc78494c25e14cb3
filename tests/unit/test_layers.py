"""Layer cache keys: a layer is rebuilt only when something it reads changes."""

from __future__ import annotations

import copy

from hubkiln.config.profile import load_profile
from hubkiln.stages.cache import layer_key
from hubkiln.stages.provision import STEPS, provision_env, step_env, steps_in


def env_of(**changes) -> dict[str, str]:
    profile = load_profile("ci")
    data = copy.deepcopy(profile.data)
    for dotted, value in changes.items():
        node = data
        *parents, last = dotted.split("__")
        for key in parents:
            node = node[key]
        node[last] = value
    return provision_env(type(profile)(profile.name, profile.path, profile.files, data))


def test_every_declared_input_is_provided():
    provided = set(env_of())
    for step in STEPS:
        assert set(step.inputs) <= provided, step.script


def test_a_hub_setting_does_not_rebuild_the_environments():
    envs = steps_in("envs")
    before = layer_key("os", envs, env_of())
    after = layer_key("os", envs, env_of(hub__idle_culling={"enabled": True,
                                                            "timeout_minutes": 61}))
    assert before == after


def test_a_course_package_rebuilds_the_environments():
    envs = steps_in("envs")
    assert layer_key("os", envs, env_of()) != layer_key(
        "os", envs, env_of(environment__python_packages=["networkx", "pulp==3.3.2"]))


def test_scripts_see_only_what_they_declare():
    (apt,) = [s for s in STEPS if s.script == "10-apt-packages.sh"]
    assert set(step_env([apt], env_of())) == {"HUBKILN_APT_PACKAGES", "HUBKILN_APT_PROXY"}


def test_prune_keeps_the_most_recently_used_trees(tmp_path):
    import os

    from hubkiln.stages.cache import prune_cache

    for i in range(4):
        tree = tmp_path / f"envs-{i}"
        tree.mkdir()
        os.utime(tree, (1000 + i, 1000 + i))
    (tmp_path / "os-a").mkdir()
    removed = prune_cache(tmp_path, keep=2, log=tmp_path / "log")
    assert sorted(p.name for p in removed) == ["envs-0", "envs-1"]
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["envs-2", "envs-3", "os-a"]


def test_declared_files_exist():
    from hubkiln.paths import PROVISION_DIR

    for step in STEPS:
        for name in step.files:
            assert (PROVISION_DIR / "files" / name).exists(), f"{step.script}: {name}"


def test_hub_config_files_do_not_key_the_environments():
    envs = steps_in("envs")
    assert not {"hub", "bin", "systemd"} & {n for s in envs for n in s.files}

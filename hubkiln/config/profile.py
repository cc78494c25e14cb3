"""Course profiles: load the YAML, merge what it extends, check it all up front.

A profile is data. `load_profile` reads the file and the chain of profiles it
`extends` (ending in `profiles/defaults.yaml`), merges them (mappings merge,
lists and scalars replace), checks the result against `schema.yaml`, then
checks what a schema cannot (that folders and files exist). Every problem is
collected and raised at once as a `ProfileError`, each message naming the
file, the dotted key path, what was found and what is allowed.

Limits: relative paths are resolved against the file that set the key; a
profile cannot remove a key that the profile it extends sets (only override).
"""

from __future__ import annotations

import copy
import math
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml

from hubkiln.config.guest import schema as guest_schema
from hubkiln.config.guest import settings as guest_settings
from hubkiln.errors import ProfileError
from hubkiln.paths import PROFILES_DIR

SCHEMA_FILE = Path(__file__).resolve().parent / "schema.yaml"
DEFAULTS_NAME = "defaults"

KeyPath = tuple[str | int, ...]


@cache
def load_schema() -> dict[str, Any]:
    """The profile schema (hubkiln/config/schema.yaml) with the image's settings contract
    embedded (its `$defs`, which the hub's keys `$ref`)."""
    return guest_schema().embedding(yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8")))


@dataclass(frozen=True)
class Profile:
    """A merged, validated profile. `data` follows schema.yaml; paths in it are absolute."""

    name: str
    path: Path
    files: tuple[Path, ...]
    data: dict[str, Any] = field(repr=False)

    def __getitem__(self, key: str) -> Any:
        return self.data[key]


# --- messages -----------------------------------------------------------------


def display_path(path: Path) -> str:
    """Return `path` relative to the working directory when it lies below it."""
    try:
        return str(path.resolve().relative_to(Path.cwd().resolve()))
    except ValueError:
        return str(path)


def format_keypath(keypath: KeyPath) -> str:
    """Render ('hub', 'limits', 'memory') as `hub.limits.memory`, indices as `[0]`."""
    return guest_schema().format_keypath(keypath)


def show(value: Any) -> str:
    """Render a YAML value the way the user wrote it, for error messages."""
    return guest_schema().show(value)


# --- reading and merging ---------------------------------------------------------


def read_yaml_mapping(path: Path) -> tuple[dict[str, Any] | None, list[str]]:
    """Read one profile file. Return (mapping, problems); mapping is None on problems."""
    where = display_path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None, [f"{where}: no such profile file"]
    except OSError as exc:
        return None, [f"{where}: cannot be read: {exc.strerror}"]
    except UnicodeDecodeError:
        return None, [f"{where}: is not UTF-8 text"]
    rules = guest_schema()
    try:
        data = rules.read_yaml(text, where)
    except rules.YamlError as exc:
        return None, exc.problems
    if data is None:
        return None, [f"{where}: the file is empty; a profile needs at least `name`"]
    if not isinstance(data, dict):
        return None, [f"{where}: (top level): {rules.type_of(data)}, expected a mapping of keys"]
    return data, []


def resolve_extends(ref: str, relative_to: Path) -> Path:
    """Map an `extends` value to a file: a name beside `relative_to`, or a path."""
    candidate = Path(ref)
    if candidate.suffix in (".yaml", ".yml") or os.sep in ref:
        return (relative_to.parent / candidate).resolve()
    beside = relative_to.parent / f"{ref}.yaml"
    if beside.exists() or ref != DEFAULTS_NAME:
        return beside.resolve()
    return (PROFILES_DIR / f"{DEFAULTS_NAME}.yaml").resolve()


def read_chain(path: Path) -> tuple[list[tuple[Path, dict[str, Any]]], list[str]]:
    """Read `path` and every profile it extends. Return [(file, data)] base first."""
    chain: list[tuple[Path, dict[str, Any]]] = []
    seen: list[Path] = []
    current = path.resolve()
    defaults = (PROFILES_DIR / f"{DEFAULTS_NAME}.yaml").resolve()
    while True:
        data, problems = read_yaml_mapping(current)
        if problems:
            return chain, problems
        assert data is not None
        seen.append(current)
        chain.insert(0, (current, data))
        ref = data.get("extends")
        if ref is None:
            if current == defaults:
                return chain, []
            ref, explicit = DEFAULTS_NAME, False
        else:
            explicit = True
        if not isinstance(ref, str) or not ref:
            return chain, [f"{display_path(current)}: extends: {show(ref)} is "
                           f"{guest_schema().type_of(ref)}, "
                           "expected the name or path of a profile"]
        target = resolve_extends(ref, current)
        where = f"{display_path(current)}: extends"
        if target == current:
            return chain, [f"{where}: {show(ref)} is this profile itself; "
                           "extend another profile, such as 'defaults'"]
        if target in seen:
            loop = " → ".join(display_path(p) for p in [*seen, target])
            return chain, [f"{where}: {show(ref)} leads back to a profile already read ({loop})"]
        if not target.exists():
            if not explicit:
                return chain, [f"{where}: the defaults file {display_path(target)} is missing"]
            return chain, [f"{where}: {show(ref)} not found (looked for {display_path(target)})"]
        current = target


def merge_into(
    base: dict[str, Any],
    override: dict[str, Any],
    origin: Path,
    provenance: dict[KeyPath, Path],
    prefix: KeyPath = (),
) -> None:
    """Merge `override` into `base` in place; record which file set each key."""
    for key, value in override.items():
        path = prefix + (key,)
        provenance[path] = origin
        if isinstance(value, dict) and isinstance(base.get(key), dict):
            merge_into(base[key], value, origin, provenance, path)
        else:
            base[key] = copy.deepcopy(value)


def origin_of(keypath: KeyPath, provenance: dict[KeyPath, Path], fallback: Path) -> Path:
    """The file that set `keypath` or its closest parent."""
    for end in range(len(keypath), 0, -1):
        if keypath[:end] in provenance:
            return provenance[keypath[:end]]
    return fallback


# --- checks beyond the schema ----------------------------------------------------


def _list_at(data: dict[str, Any], *keys: str) -> list[Any]:
    """The list at data[k1][k2]..., or [] when the structure is not there (schema errors)."""
    node: Any = data
    for key in keys:
        node = node.get(key) if isinstance(node, dict) else None
    return node if isinstance(node, list) else []


def check_paths(
    data: dict[str, Any], provenance: dict[KeyPath, Path]
) -> tuple[list[tuple[KeyPath, str]], dict[KeyPath, Path]]:
    """Check that referenced folders and files exist. Return (problems, resolved paths)."""
    problems: list[tuple[KeyPath, str]] = []
    resolved: dict[KeyPath, Path] = {}
    wanted: list[tuple[KeyPath, str, str]] = []
    folders = [f for f in _list_at(data, "content", "folders") if isinstance(f, dict)]
    for i, folder in enumerate(folders):
        if isinstance(folder.get("source"), str):
            wanted.append((("content", "folders", i, "source"), folder["source"], "folder"))
    for i, ca in enumerate(_list_at(data, "base", "build_ca_certificates")):
        if isinstance(ca, str):
            wanted.append((("base", "build_ca_certificates", i), ca, "file"))
    for keypath, value, kind in wanted:
        origin = origin_of(keypath, provenance, Path.cwd() / "profile")
        target = (origin.parent / value).resolve()
        ok = target.is_dir() if kind == "folder" else target.is_file()
        if ok:
            resolved[keypath] = target
        else:
            problems.append((keypath, f"{show(value)}: no such {kind} ({display_path(target)})"))
    names = [str(f.get("name") or Path(str(f.get("source"))).name) for f in folders]
    for i, name in enumerate(names):
        if names.index(name) != i:
            problems.append((("content", "folders", i, "name"),
                             f"{show(name)} is used by another content folder; give it a `name`"))
    return problems, resolved


#: The systems whose security updates are an archive of their own, beside the main one.
SEPARATE_SECURITY_ARCHIVE = frozenset({"debian-12"})


def check_mirrors(base: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """`apt_security_mirror` goes with `apt_mirror`, and a system whose security updates
    are an archive of their own needs it with a mirror. (A `base` of the wrong shape is
    the schema's to report.)"""
    if not isinstance(base, dict):
        return []
    if base.get("apt_security_mirror") and not base.get("apt_mirror"):
        return [(("base", "apt_security_mirror"), "is used only with base.apt_mirror (without "
                 "a mirror the distribution's own security archive is used)")]
    if base.get("apt_mirror") and not base.get("apt_security_mirror") and \
            str(base.get("os")) in SEPARATE_SECURITY_ARCHIVE:
        return [(("base", "apt_security_mirror"), f"is needed with base.apt_mirror on "
                 f"{base['os']}: its security updates are an archive of their own (a mirror "
                 "often carries it beside the main one, as .../debian-security)")]
    return []


def check_admin_names(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """Admin names the image would refuse (the guest's rules: reserved names, and Unix
    names with a password login)."""
    rules = guest_settings()
    problems: list[tuple[KeyPath, str]] = []
    admins = _list_at(data, "hub", "admins")
    for i, name in enumerate(admins):
        if isinstance(name, str) and (problem := rules.account_name_problem(name)):
            problems.append((("hub", "admins", i), problem))
    authenticator = data.get("hub", {}).get("authenticator") \
        if isinstance(data.get("hub"), dict) else None
    if isinstance(authenticator, str):
        for problem in rules.login_name_problems(authenticator, "admins", admins):
            problems.append((("hub", "admins"), problem.removeprefix("admins: ")))
    return problems


# --- the entry point ------------------------------------------------------------------


def find_profile_file(ref: str | os.PathLike, profiles_dir: Path = PROFILES_DIR) -> Path:
    """Map `--profile` (a name in profiles/ or a path to a YAML file) to a file path."""
    text = str(ref)
    candidate = Path(text)
    if candidate.suffix in (".yaml", ".yml") or os.sep in text:
        return candidate
    return profiles_dir / f"{text}.yaml"


def load_profile(ref: str | os.PathLike, profiles_dir: Path = PROFILES_DIR) -> Profile:
    """Load, merge and check a profile; raise ProfileError listing every problem."""
    path = find_profile_file(ref, profiles_dir)
    chain, problems = read_chain(path)
    if problems:
        raise ProfileError(problems)
    data: dict[str, Any] = {}
    provenance: dict[KeyPath, Path] = {}
    for origin, layer in chain:
        merge_into(data, layer, origin, provenance)
    data.pop("extends", None)
    top = chain[-1][0]

    schema = load_schema()
    data = guest_schema().fill_defaults(data, schema, schema)
    found = guest_schema().check_against(
        schema, data, missing="is missing (every profile must set it or extend one that does)")
    path_problems, resolved = check_paths(data, provenance)
    found.extend(path_problems)
    found.extend(check_admin_names(data))
    found.extend(check_mirrors(data.get("base")))
    if found:
        messages = sorted(
            {f"{display_path(origin_of(kp, provenance, top))}: {format_keypath(kp)}: {msg}"
             for kp, msg in found}
        )
        raise ProfileError(messages)

    for keypath, target in resolved.items():
        parent = data
        for part in keypath[:-1]:
            parent = parent[part]
        parent[keypath[-1]] = str(target)
    for folder in data["content"]["folders"]:
        folder.setdefault("name", Path(folder["source"]).name)
    return Profile(name=data["name"], path=top, files=tuple(p for p, _ in chain), data=data)


# --- sizes ----------------------------------------------------------------------------


def parse_size(text: str) -> int:
    """Bytes of a schema-valid size like `2G` or `1.5G` (binary units): the image's reading."""
    return guest_schema().parse_size(text)


#: Memory left for the OS, the hub and its proxy besides one student's server.
HUB_OVERHEAD_MIB = 1024


MIN_MEMORY_MIB = 2048


MIN_CPUS = 2


@dataclass(frozen=True)
class VmResources:
    """CPUs and memory of a VM made from the image (OVF, libvirt domain)."""

    cpus: int
    memory_mib: int


def vm_resources(limits: dict[str, Any]) -> VmResources:
    """A VM that runs the hub and one student's server at the profile's `hub.limits`:
    the student's memory plus HUB_OVERHEAD_MIB (at least 2 GiB), their CPUs (at least 2).
    Size a class's VM at launch; this is a starting point, not a capacity plan."""
    student = parse_size(limits["memory"]) >> 20
    return VmResources(cpus=max(MIN_CPUS, math.ceil(limits["cpu"])),
                       memory_mib=max(MIN_MEMORY_MIB, student + HUB_OVERHEAD_MIB))

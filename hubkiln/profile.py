"""Course profiles: load the YAML, merge what it extends, validate it all up front.

A profile is data. `load_profile` reads the file and the chain of profiles it
`extends` (ending in `profiles/defaults.yaml`), merges them (mappings merge,
lists and scalars replace), validates the result against `schema.yaml`, then
checks what a schema cannot (that folders and files exist). Every problem is
collected and raised at once as a `ProfileError`, each message naming the
file, the dotted key path, what was found and what is allowed.

Limits: relative paths are resolved against the file that set the key; a
profile cannot remove a key that the profile it extends sets (only override).
"""

from __future__ import annotations

import copy
import difflib
import json
import os
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

from .errors import ProfileError
from .guest import settings as guest_settings

PACKAGE_DIR = Path(__file__).resolve().parent
PROJECT_DIR = PACKAGE_DIR.parent
PROFILES_DIR = PROJECT_DIR / "profiles"
SCHEMA_FILE = PACKAGE_DIR / "schema.yaml"
DEFAULTS_NAME = "defaults"

KeyPath = tuple[str | int, ...]


@cache
def load_schema() -> dict[str, Any]:
    """Return the profile schema (hubkiln/schema.yaml) as a dict."""
    return yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))


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
    out = ""
    for part in keypath:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += f".{part}" if out else str(part)
    return out or "(top level)"


def show(value: Any) -> str:
    """Render a YAML value the way the user wrote it, for error messages."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, (int, float)):
        return str(value)
    text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


_TYPE_NAMES = {
    "string": "a string",
    "number": "a number",
    "integer": "a whole number",
    "boolean": "true or false",
    "array": "a list",
    "object": "a mapping",
    "null": "null",
}


def _type_of(value: Any) -> str:
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, int):
        return "a whole number"
    if isinstance(value, float):
        return "a number"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, dict):
        return "a mapping"
    return type(value).__name__


def describe_error(error: ValidationError) -> list[tuple[KeyPath, str]]:
    """Turn one jsonschema error into (key path, message) pairs a teacher can act on."""
    path: KeyPath = tuple(error.absolute_path)
    value = error.instance
    schema = error.schema if isinstance(error.schema, dict) else {}
    kind = error.validator
    if kind == "additionalProperties":
        allowed = sorted(schema.get("properties", {}))
        out = []
        for key in sorted(set(value) - set(allowed)):
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
            out.append((path + (key,), f"unknown key '{key}' ({hint})"))
        return out
    if kind == "required":
        missing = error.validator_value
        keys = [k for k in missing if k not in value] if isinstance(value, dict) else missing
        return [(path + (k,), "is missing (every profile must set it or extend one that does)")
                for k in keys]
    if kind == "type":
        wanted = error.validator_value
        wanted = wanted if isinstance(wanted, list) else [wanted]
        names = " or ".join(_TYPE_NAMES.get(w, w) for w in wanted)
        return [(path, f"{show(value)} is {_type_of(value)}, expected {names}")]
    if kind == "enum":
        choices = ", ".join(str(c) for c in error.validator_value)
        return [(path, f"{show(value)} is not one of: {choices}")]
    if kind == "pattern":
        message = schema.get("x-error", f"does not match {error.validator_value}")
        return [(path, f"{show(value)} {message}")]
    if kind == "exclusiveMinimum":
        return [(path, f"{show(value)} must be greater than {error.validator_value}")]
    if kind == "minimum":
        return [(path, f"{show(value)} is below the minimum of {error.validator_value}")]
    if kind == "maximum":
        return [(path, f"{show(value)} is above the maximum of {error.validator_value}")]
    if kind == "minItems":
        return [(path, f"must list at least {error.validator_value} item(s)")]
    if kind == "minLength":
        return [(path, "must not be empty")]
    if kind == "uniqueItems":
        dups = sorted({show(v) for v in value if value.count(v) > 1})
        return [(path, f"lists {', '.join(dups)} more than once")]
    return [(path, error.message)]


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
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        line = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = getattr(exc, "problem", None) or str(exc)
        return None, [f"{where}: {line}YAML syntax error: {problem}"]
    if data is None:
        return None, [f"{where}: the file is empty; a profile needs at least `name`"]
    if not isinstance(data, dict):
        return None, [f"{where}: (top level): {_type_of(data)}, expected a mapping of keys"]
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
            return chain, [f"{display_path(current)}: extends: {show(ref)} is {_type_of(ref)}, "
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


def check_admin_names(data: dict[str, Any]) -> list[tuple[KeyPath, str]]:
    """Admin names the image would refuse (the guest's reserved-name rule)."""
    problems = []
    for i, name in enumerate(_list_at(data, "hub", "admins")):
        if isinstance(name, str) and (problem := guest_settings().reserved_name_problem(name)):
            problems.append((("hub", "admins", i), problem))
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
    """Load, merge and validate a profile; raise ProfileError listing every problem."""
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

    found: list[tuple[KeyPath, str]] = []
    validator = Draft202012Validator(load_schema())
    for error in validator.iter_errors(data):
        found.extend(describe_error(error))
    path_problems, resolved = check_paths(data, provenance)
    found.extend(path_problems)
    found.extend(check_admin_names(data))
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

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Parse a schema-valid size like `2G` or `1.5G` (binary units) into bytes."""
    return int(float(text[:-1]) * _UNITS[text[-1]])

"""hubkiln_schema: the settings contract (settings.schema.yaml) and strict YAML reading.

The image owns its settings contract: settings.schema.yaml, installed beside this
module in the hub's environment. hubkiln_hub checks the hub's drop-ins with it and
hubkiln-apply-launch the launch settings; the build loads this very file (through
hubkiln.config.guest) to check profiles and launch files, so that each rule, default and
message exists once. Standard library, PyYAML and jsonschema only.

- `read_yaml`: one YAML document, refusing what PyYAML would silently accept (a key
  set twice, a key that is not text); every problem is located (line, column, key).
- `check(data, name)`: every problem of `data` against `$defs/NAME`, as (key path,
  message) pairs a teacher can act on; `check_against` does it for a schema that
  embeds these `$defs` (the build's profile and launch-file schemas).
- `defaults(name)` and `fill_defaults`: the documented `default`s, the only ones.
- `parse_size`: the one reading of sizes like `2G`.
"""

from __future__ import annotations

import copy
import difflib
import json
import re
from functools import cache
from pathlib import Path
from typing import Any

import yaml
from jsonschema import Draft202012Validator
from jsonschema.exceptions import ValidationError

SCHEMA_FILE = Path(__file__).with_name("settings.schema.yaml")

KeyPath = tuple[Any, ...]
Problem = tuple[KeyPath, str]


# ---------------------------------------------------------------- the schema


@cache
def schema() -> dict[str, Any]:
    """settings.schema.yaml as a dict (read once)."""
    return yaml.safe_load(SCHEMA_FILE.read_text(encoding="utf-8"))


def definition(name: str) -> dict[str, Any]:
    """`$defs/NAME` of the settings schema."""
    return schema()["$defs"][name]


def embedding(node: dict[str, Any]) -> dict[str, Any]:
    """A schema document for `node` whose `#/$defs/...` references resolve to ours."""
    return {**node, "$defs": {**schema()["$defs"], **node.get("$defs", {})}}


def resolve(node: Any, root: dict[str, Any]) -> dict[str, Any]:
    """`node` with its local `$ref` followed (its own keys win over the target's)."""
    seen = 0
    while isinstance(node, dict) and isinstance(node.get("$ref"), str) \
            and node["$ref"].startswith("#/") and seen < 32:
        target: Any = root
        for part in node["$ref"][2:].split("/"):
            target = target[part.replace("~1", "/").replace("~0", "~")]
        node = {**target, **{k: v for k, v in node.items() if k != "$ref"}}
        seen += 1
    return node if isinstance(node, dict) else {}


def pattern(name: str) -> re.Pattern[str]:
    """The compiled `pattern` of `$defs/NAME` (for rules that need it in code)."""
    return re.compile(definition(name)["pattern"])


# ---------------------------------------------------------------- defaults


def fill_defaults(data: Any, node: dict[str, Any], root: dict[str, Any]) -> Any:
    """A copy of `data` with every key that the schema `node` gives a `default` and
    `data` leaves out; mappings the data leaves out are filled when their keys have
    defaults. Values of the wrong type are left for the check to report."""
    node = resolve(node, root)
    if isinstance(data, dict) and "properties" in node:
        out = dict(data)
        for key, child in node["properties"].items():
            child = resolve(child, root)
            if key in out:
                out[key] = fill_defaults(out[key], child, root)
            elif "default" in child:
                out[key] = copy.deepcopy(child["default"])
            elif "properties" in child:
                filled = fill_defaults({}, child, root)
                if filled:
                    out[key] = filled
        return out
    if isinstance(data, list) and isinstance(node.get("items"), dict):
        return [fill_defaults(item, node["items"], root) for item in data]
    return data


def defaults(name: str) -> dict[str, Any]:
    """The document `$defs/NAME` is when nothing is set: every key's `default`."""
    return fill_defaults({}, definition(name), schema())


# ---------------------------------------------------------------- messages


def show(value: Any) -> str:
    """A value the way the user wrote it, shortened, for messages."""
    if isinstance(value, str):
        text = repr(value)
    elif isinstance(value, bool) or value is None:
        text = json.dumps(value)
    elif isinstance(value, (int, float)):
        text = str(value)
    else:
        text = json.dumps(value, default=str)
    return text if len(text) <= 60 else text[:57] + "..."


def type_of(value: Any) -> str:
    for kind, name in ((type(None), "null"), (bool, "a boolean"), (int, "a whole number"),
                       (float, "a number"), (str, "a string"), (list, "a list"),
                       (dict, "a mapping")):
        if isinstance(value, kind):
            return name
    return f"a {type(value).__name__}"  # a YAML date, for instance


TYPE_NAMES = {"string": "a string", "number": "a number", "integer": "a whole number",
              "boolean": "true or false", "array": "a list", "object": "a mapping",
              "null": "null"}
YAML_QUOTES = (" (YAML reads unquoted yes, no, on, off, true, false, null and numbers as "
               "such: put the value in quotes)")


#: Keys shown as they are in key paths; others are quoted ('a b', '').
PLAIN_KEY = re.compile(r"[A-Za-z0-9_@+-]+")


def format_keypath(keypath: KeyPath) -> str:
    """('hub', 'limits', 'memory') as `hub.limits.memory`, indices as `[0]`."""
    out = ""
    for part in keypath:
        if isinstance(part, int):
            out += f"[{part}]"
            continue
        name = str(part) if PLAIN_KEY.fullmatch(str(part)) else repr(str(part))
        out += f".{name}" if out else name
    return out or "(top level)"


def is_secret(keypath: KeyPath, node: dict[str, Any], root: dict[str, Any]) -> bool:
    """Whether the schema marks the value at `keypath`, or one above it, `x-secret`."""
    node = resolve(node, root)
    for part in keypath:
        if node.get("x-secret"):
            return True
        if isinstance(part, int):
            node = resolve(node.get("items", {}), root)
        else:
            node = resolve(node.get("properties", {}).get(part)
                           or node.get("additionalProperties") or {}, root)
    return bool(node.get("x-secret"))


def clock_hint(value: int) -> str:
    """YAML 1.1 reads an unquoted 10:30 as a number in base 60 (630)."""
    return (f"{value} is not a time like \"09:00\": put the time in quotes (YAML reads "
            f"an unquoted {value // 60}:{value % 60:02d} as the number {value})")


def describe(error: ValidationError, missing: str = "is missing") -> list[Problem]:
    """One jsonschema error as (key path, message) pairs; `missing` words a missing key
    (`{parent}`: the mapping's key path, `{needs}`: the keys it requires)."""
    path: KeyPath = tuple(error.absolute_path)
    value = error.instance
    node = error.schema if isinstance(error.schema, dict) else {}
    kind = error.validator
    if kind == "additionalProperties" and isinstance(value, dict):
        allowed = sorted(node.get("properties", {}))
        out = []
        for key in sorted((k for k in value if k not in allowed), key=str):
            close = difflib.get_close_matches(str(key), allowed, n=1, cutoff=0.6)
            hint = f"did you mean '{close[0]}'?" if close else f"allowed: {', '.join(allowed)}"
            out.append((path + (key,), f"unknown key {show(key)} ({hint})"))
        return out
    if kind == "required" and isinstance(value, dict):
        needs = ", ".join(error.validator_value)
        return [(path + (key,), missing.format(parent=format_keypath(path), needs=needs))
                for key in error.validator_value if key not in value]
    if kind == "type":
        wanted = error.validator_value if isinstance(error.validator_value, list) \
            else [error.validator_value]
        if node.get("x-clock-time") and isinstance(value, int) and not isinstance(value, bool) \
                and 0 <= value < 24 * 60:
            return [(path, clock_hint(value))]
        message = (f"{show(value)} is {type_of(value)}, expected "
                   + " or ".join(TYPE_NAMES.get(w, str(w)) for w in wanted))
        if "string" in wanted and (isinstance(value, (bool, int, float))
                                   or (value is None and path and isinstance(path[-1], int))):
            message += YAML_QUOTES
        return [(path, message)]
    if kind == "enum":
        return [(path, f"{show(value)} is not one of: "
                 + ", ".join(str(c) for c in error.validator_value))]
    if kind == "pattern" and isinstance(value, str) and "PRIVATE KEY-----" in value \
            and "x-private-key" in node:
        return [(path, node["x-private-key"])]  # never shown
    if kind == "pattern":
        if isinstance(value, str) and value.startswith("ssh-dss "):
            return [(path, f"{show(value)} is a DSA key, which OpenSSH no longer accepts; "
                     "make an ed25519 key (ssh-keygen -t ed25519)")]
        message = node.get("x-error", f"does not match {error.validator_value}")
        return [(path, f"{show(value)} {' '.join(message.split())}")]
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
    if kind == "uniqueItems" and isinstance(value, list):
        dups = sorted({show(v) for v in value if value.count(v) > 1})
        return [(path, f"lists {', '.join(dups)} more than once")]
    return [(path, " ".join(error.message.split()))]


def check_against(document: dict[str, Any], data: Any, *,
                  missing: str = "is missing") -> list[Problem]:
    """Every problem of `data` against the schema `document`, secrets hidden, sorted
    by key path; `document` may `$ref` this schema's `$defs` (see `embedding`)."""
    problems: list[Problem] = []
    for error in Draft202012Validator(document).iter_errors(data):
        shown = show(error.instance)
        for keypath, message in describe(error, missing):
            if message.startswith(shown) and is_secret(tuple(error.absolute_path), document,
                                                    document):
                message = "(value hidden)" + message[len(shown):]
            problems.append((keypath, message))
    return sorted(set(problems), key=lambda p: (format_keypath(p[0]), p[1]))


@cache
def _document(name: str) -> dict[str, Any]:
    return embedding({"$ref": f"#/$defs/{name}"})


def check(data: Any, name: str) -> list[Problem]:
    """Every problem of `data` against `$defs/NAME` (`hub` or `launch`)."""
    return check_against(_document(name), data)


# ---------------------------------------------------------------- strict YAML


class YamlError(Exception):
    """A YAML file that cannot be used; `problems` are located messages."""

    def __init__(self, problems: list[str]):
        super().__init__("\n".join(problems))
        self.problems = problems


class _StrictLoader(yaml.SafeLoader):
    """PyYAML's safe loader; read_yaml checks the composed nodes before constructing."""


def _node_problems(node: yaml.Node, path: KeyPath) -> list[str]:
    """Keys set twice and keys that are not text, anywhere below `node`."""
    found: list[str] = []
    if isinstance(node, yaml.MappingNode):
        lines: dict[str, int] = {}
        for key_node, value_node in node.value:
            line = key_node.start_mark.line + 1
            if key_node.tag == "tag:yaml.org,2002:merge":
                found.append(f"line {line}: {format_keypath(path)}: merge keys (<<) are not "
                             "supported: write the keys out")
                continue
            if not isinstance(key_node, yaml.ScalarNode) or key_node.tag != "tag:yaml.org,2002:str":
                shown = key_node.value if isinstance(key_node, yaml.ScalarNode) else "?"
                found.append(f"line {line}: {format_keypath(path + (str(shown),))}: the key "
                             f"{shown!s} is not text (YAML reads unquoted yes, no, on, off, "
                             "true, false, null and numbers as such: put it in quotes)")
                continue
            key = key_node.value
            if key in lines:
                found.append(f"line {line}: {format_keypath(path + (key,))}: is set twice "
                             f"(lines {lines[key]} and {line}); only the last would count, "
                             "so merge them")
            lines.setdefault(key, line)
            found += _node_problems(value_node, path + (key,))
    elif isinstance(node, yaml.SequenceNode):
        for index, item in enumerate(node.value):
            found += _node_problems(item, path + (index,))
    return found


def read_yaml(text: str, where: str) -> Any:
    """The one YAML document in `text`; YamlError with `where: line N...` messages for
    a syntax error, a key set twice (PyYAML keeps the last one silently), a key that is
    not text or a merge key. An empty document is None."""
    loader = None
    try:
        loader = _StrictLoader(text)
        node = loader.get_single_node()
        if node is None:
            return None
        problems = _node_problems(node, ())
        if problems:
            raise YamlError([f"{where}: {p}" for p in problems])
        return loader.construct_document(node)
    except yaml.MarkedYAMLError as error:
        mark = error.problem_mark or error.context_mark
        at = f"line {mark.line + 1}, column {mark.column + 1}: " if mark else ""
        problem = error.problem or error.context or "not valid YAML"
        raise YamlError([f"{where}: {at}YAML syntax error: {problem}"]) from None
    except yaml.reader.ReaderError as error:  # a character YAML does not allow
        line = text.count("\n", 0, error.position) + 1
        raise YamlError([f"{where}: line {line}: YAML syntax error: the character "
                         f"#x{error.character:04x} is not allowed in YAML"]) from None
    except yaml.YAMLError as error:
        raise YamlError([f"{where}: line 1: not valid YAML: "
                         f"{' '.join(str(error).split())}"]) from None
    except RecursionError:
        raise YamlError([f"{where}: line 1: nested too deeply to be settings"]) from None
    finally:
        if loader is not None:
            loader.dispose()


# ---------------------------------------------------------------- values

_UNITS = {"K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """Bytes of a size that matches `$defs/size`, like `2G` or `1.5G` (binary units)."""
    if not pattern("size").search(text):
        raise ValueError(f"{show(text)} is not a size like 2G")
    return int(float(text[:-1]) * _UNITS[text[-1]])

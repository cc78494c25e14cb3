"""Render Python values as HCL2 literals, for the Jinja `hcl` filter.

Templates never build strings themselves: every value goes through `to_hcl`,
so quoting and escaping live in one tested place. Strings are escaped so that
HCL does not interpolate them (`${` → `$${`, `%{` → `%%{`); Packer's own Go
templates such as `{{ .Vars }}` pass through untouched.

Limits: mappings render as HCL object expressions (`{ key = value }`), which
is what Packer arguments of map type accept; blocks are written in templates.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping, Sequence
from typing import Any

_IDENTIFIER = re.compile(r"^[A-Za-z_][A-Za-z0-9_-]*$")


def hcl_string(text: str) -> str:
    """Quote `text` as an HCL string that evaluates to exactly `text`."""
    quoted = json.dumps(text, ensure_ascii=False)
    return quoted.replace("${", "$${").replace("%{", "%%{")


def to_hcl(value: Any) -> str:
    """Render a str, bool, int, float, None, list or mapping as an HCL literal."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, (int, float)):
        return json.dumps(value)
    if isinstance(value, str):
        return hcl_string(value)
    if isinstance(value, Mapping):
        items = []
        for key, item in value.items():
            name = key if _IDENTIFIER.match(str(key)) else hcl_string(str(key))
            items.append(f"{name} = {to_hcl(item)}")
        return "{ " + ", ".join(items) + " }" if items else "{}"
    if isinstance(value, Sequence):
        return "[" + ", ".join(to_hcl(item) for item in value) + "]"
    raise TypeError(f"cannot render {type(value).__name__} as HCL: {value!r}")

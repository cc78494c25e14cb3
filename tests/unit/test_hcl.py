"""HCL literals: quoting, escaping of interpolation, nesting."""

from __future__ import annotations

import pytest

from hubkiln.stages.hcl import hcl_string, to_hcl


@pytest.mark.parametrize("value,expected", [
    ("plain", '"plain"'),
    ('say "hi"\n', '"say \\"hi\\"\\n"'),
    ("${not_interpolated}", '"$${not_interpolated}"'),
    ("%{ if x }", '"%%{ if x }"'),
    ("{{ .Vars }}", '"{{ .Vars }}"'),
    (True, "true"),
    (False, "false"),
    (None, "null"),
    (3, "3"),
    (0.5, "0.5"),
    ([], "[]"),
    (["a", 1], '["a", 1]'),
    ([["-serial", "file:x"]], '[["-serial", "file:x"]]'),
    ({"name": "x", "root-device-type": "ebs"}, '{ name = "x", root-device-type = "ebs" }'),
    ({"a b": 1}, '{ "a b" = 1 }'),
    ({}, "{}"),
])
def test_to_hcl(value, expected):
    assert to_hcl(value) == expected


def test_unicode_stays_readable():
    assert hcl_string("Python 3 (Optimización)") == '"Python 3 (Optimización)"'


def test_unknown_types_are_refused():
    with pytest.raises(TypeError):
        to_hcl(object())

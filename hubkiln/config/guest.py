"""The guest's own rule modules, read by the build (the guest never imports the builder).

`provision/files/hub/` holds the modules installed into the image's hub environment:
the settings contract (`settings.schema.yaml`, `hubkiln_schema`), the settings rules
(`hubkiln_hub`), the HTTPS front's rules (`hubkiln_front`) and the login rules
(`hubkiln_auth`). The build imports the very same files, so that a rule exists in one
place: importing this module lets `import hubkiln_schema` (and the others) find them,
without writing __pycache__ into provision/ (its contents are hashed into the
build's cache keys). They need only the standard library, PyYAML and jsonschema.
"""

from __future__ import annotations

import importlib.abc
import importlib.machinery
import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

from hubkiln.paths import GUEST_FILES


class _SourceOnly(importlib.machinery.SourceFileLoader):
    """Loads a guest file without writing its bytecode beside it."""

    def set_data(self, path: str, data: bytes, *, _mode: int = 0o666) -> None:
        return None


class _GuestModules(importlib.abc.MetaPathFinder):
    """Finds `hubkiln_*` modules among the guest's hub files."""

    def find_spec(self, name: str, path: object = None, target: object = None):
        if not name.startswith("hubkiln_") or "." in name:
            return None
        file = GUEST_FILES / f"{name}.py"
        if not file.is_file():
            return None
        return importlib.util.spec_from_loader(name, _SourceOnly(name, str(file)))


if not any(isinstance(finder, _GuestModules) for finder in sys.meta_path):
    sys.meta_path.append(_GuestModules())


def load_module(name: str, path: Path) -> ModuleType:
    """Import the guest file `path` (a program without `.py` too) as module `name`,
    without writing bytecode into provision/."""
    loader = _SourceOnly(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    loader.exec_module(module)
    return module


@cache
def schema() -> ModuleType:
    """hubkiln_schema: the settings contract and strict YAML reading."""
    return importlib.import_module("hubkiln_schema")


@cache
def settings() -> ModuleType:
    """hubkiln_hub: the hub settings' rules."""
    return importlib.import_module("hubkiln_hub")


@cache
def front() -> ModuleType:
    """hubkiln_front: the HTTPS front's certificate plan."""
    return importlib.import_module("hubkiln_front")


@cache
def auth() -> ModuleType:
    """hubkiln_auth: the login rules and the secret-hash format."""
    return importlib.import_module("hubkiln_auth")

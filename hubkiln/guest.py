"""The guest's own rule modules, read by the build (the guest never imports the builder).

`provision/files/hub/hubkiln_hub.py` (settings rules, reserved names) and
`hubkiln_auth.py` (login rules, secret hashes) are installed into the image's
hub environment; the build loads the very same files so that a rule exists in
one place. They need only the standard library and PyYAML at import time.
"""

from __future__ import annotations

import importlib.machinery
import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType

HUB_FILES = Path(__file__).resolve().parent.parent / "provision" / "files" / "hub"


def load_module(name: str, path: Path) -> ModuleType:
    """Import the guest file `path` (a program without `.py` too) as module `name`,
    without writing __pycache__ into provision/ (its contents are hashed into the
    build's cache keys)."""
    loader = importlib.machinery.SourceFileLoader(name, str(path))
    spec = importlib.util.spec_from_loader(name, loader)
    assert spec, f"cannot load {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module  # dataclasses and pickling look modules up by name
    previous, sys.dont_write_bytecode = sys.dont_write_bytecode, True
    try:
        loader.exec_module(module)
    finally:
        sys.dont_write_bytecode = previous
    return module


def _load(name: str) -> ModuleType:
    return load_module(f"hubkiln_guest_{name}", HUB_FILES / f"{name}.py")


@cache
def settings() -> ModuleType:
    """hubkiln_hub: the hub settings' rules."""
    return _load("hubkiln_hub")


@cache
def auth() -> ModuleType:
    """hubkiln_auth: the login rules and the secret-hash format."""
    return _load("hubkiln_auth")

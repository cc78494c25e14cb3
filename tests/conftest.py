"""Shared fixtures for every test tree."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def project_dir() -> Path:
    return PROJECT_DIR


@pytest.fixture
def sigint_raises():
    """Ctrl-C raises KeyboardInterrupt in this test, as at a terminal: Python leaves
    SIGINT ignored when it starts as a background job of a shell (CI runners may), and
    then an interrupt test's SIGINT would never arrive."""
    import signal

    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    yield
    signal.signal(signal.SIGINT, previous)

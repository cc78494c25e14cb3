"""Shared fixtures for every test tree."""

from __future__ import annotations

from pathlib import Path

import pytest

PROJECT_DIR = Path(__file__).resolve().parent.parent


@pytest.fixture
def project_dir() -> Path:
    return PROJECT_DIR

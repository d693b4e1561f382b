"""Packaging facts a user of the wheel relies on (issue 14, packaging part)."""

import importlib.metadata
from pathlib import Path

import pytest

import ckptfix

tomllib = pytest.importorskip("tomllib")  # Python 3.11+; the package supports 3.10

ROOT = Path(__file__).resolve().parent.parent


def test_the_version_is_in_one_place():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert "version" not in meta["project"] and "version" in meta["project"]["dynamic"]
    assert meta["tool"]["hatch"]["version"]["path"] == "ckptfix/__init__.py"
    assert importlib.metadata.version("ckptfix") == ckptfix.__version__


def test_license_typed_marker_and_changelog_ship():
    meta = tomllib.loads((ROOT / "pyproject.toml").read_text())
    assert meta["project"]["license"] == {"file": "LICENSE"}
    assert "MIT License" in (ROOT / "LICENSE").read_text()
    assert (ROOT / "ckptfix" / "py.typed").is_file()   # hatch ships every file of the package
    assert f"## {ckptfix.__version__}" in (ROOT / "CHANGELOG.md").read_text()

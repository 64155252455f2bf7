"""The package has one version string, and the repository refers to nothing outside itself."""

from __future__ import annotations

import importlib.metadata
import subprocess
from pathlib import Path

import deconvnet_attr

ROOT = Path(__file__).resolve().parents[1]


def test_one_version_string():
    # pyproject.toml reads the version from deconvnet_attr.__version__ (setuptools dynamic attr)
    pyproject = (ROOT / "pyproject.toml").read_text()
    assert 'dynamic = ["version"]' in pyproject
    assert 'version = { attr = "deconvnet_attr.__version__" }' in pyproject
    assert importlib.metadata.version("deconvnet-attr") == deconvnet_attr.__version__


def test_nothing_refers_outside_the_repository():
    tracked = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.toml", ".ci/*"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    offenders = [
        name for name in tracked if ".." + "/shared" in (ROOT / name).read_text(errors="ignore")
    ]
    assert offenders == []

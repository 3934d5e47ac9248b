"""What a deploy installs: the requirements files pin every package with hashes, and a Heroku-style build
finds exactly one package manager file (requirements.txt)."""

from __future__ import annotations

import re
import sys
import tomllib

import pytest

from tests.support import ROOT

REQUIREMENT_FILES = ["requirements.txt", "requirements-dev.txt", "bench/requirements.txt"]
PACKAGE_MANAGER_FILES = {"requirements.txt", "Pipfile", "Pipfile.lock", "poetry.lock", "uv.lock"}


def requirements(path: str) -> list[str]:
    """The requirements in a file, one string each, continuation lines joined."""
    text = (ROOT / path).read_text().replace("\\\n", " ")
    return [line for line in text.splitlines() if line.strip() and not line.lstrip().startswith("#")]


@pytest.mark.parametrize("path", REQUIREMENT_FILES)
def test_every_requirement_is_pinned_with_a_hash(path):
    entries = requirements(path)
    assert len(entries) >= 19
    for entry in entries:
        assert re.match(r"[a-z0-9._-]+==[0-9][^ ;]*( ;[^-]+)? +--hash=sha256:[0-9a-f]{64}", entry), entry


def test_dev_and_bench_files_hold_everything_the_runtime_file_holds():
    """pip's hash-checking mode needs every package, runtime ones too, pinned in the file it installs."""
    runtime = {entry.split()[0] for entry in requirements("requirements.txt")}
    for path in REQUIREMENT_FILES[1:]:
        assert runtime <= {entry.split()[0] for entry in requirements(path)}, path


def test_a_heroku_style_build_sees_one_package_manager_file():
    ignored = {line.strip() for line in (ROOT / ".slugignore").read_text().splitlines() if line.strip()[:1] != "#"}
    present = {name for name in PACKAGE_MANAGER_FILES if (ROOT / name).exists()}
    assert present - ignored == {"requirements.txt"}


def test_this_python_is_one_the_project_supports():
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    assert project["requires-python"] == ">=3.11,<3.14"
    assert (3, 11) <= sys.version_info[:2] <= (3, 13)

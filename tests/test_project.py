"""The project's own files agree: pyproject.toml and environment.yml, notebooks stored without outputs."""

from __future__ import annotations

import json
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"docker": "docker-py"}  # PyPI name -> conda-forge name


def _name(requirement: str) -> str:
    return re.split(r"[<>=!~ \[]", requirement, maxsplit=1)[0].lower()


def test_pyproject_and_environment_yml_agree() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    pypi = project["dependencies"] + [r for extra in project["optional-dependencies"].values() for r in extra]
    wanted = {CONDA_NAMES.get(_name(r), _name(r)): r[len(_name(r)):] for r in pypi}
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda = {_name(d): d[len(_name(d)):] for d in env["dependencies"] if isinstance(d, str)}
    conda.pop("python"), conda.pop("pip"), conda.pop("rabbitmq-server")
    assert conda == wanted
    assert {"pip": ["-e ."]} in env["dependencies"]


def test_notebooks_are_committed_without_outputs() -> None:
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        assert re.fullmatch(r"\d\d_[a-z_]+\.ipynb", path.name), path.name
        cells = json.loads(path.read_text())["cells"]
        dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])]
        assert not dirty, f"{path.name}: cells {dirty} have outputs; strip them before committing"


def test_doctor_runs() -> None:
    done = subprocess.run([sys.executable, "-m", "voicelab", "doctor"], capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr
    assert "voicelab will use" in done.stdout or "no broker can be had" in done.stdout


def test_build_script_is_packaged() -> None:
    from voicelab.cli import BUILD_SCRIPT

    text = BUILD_SCRIPT.read_text()
    assert "debootstrap" in text and "loopback_users.guest = false" in text

"""The project's own files agree (pyproject.toml and environment.yml, notebooks stored without outputs, the wheel),
and voicelab's modules form layers: library <- lab <- tools (exercises, bench, CLI), no cycle, no plots in the library.
"""

from __future__ import annotations

import ast
import functools
import json
import os
import re
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

import yaml

from voicelab import broker as vb

ROOT = Path(__file__).resolve().parents[1]
CONDA_NAMES = {"docker": "docker-py", "prometheus-client": "prometheus_client"}  # PyPI name -> conda-forge name


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


def test_one_python_floor_that_the_code_honours() -> None:
    """pyproject.toml and environment.yml name the same Python floor, and it is the one the code needs:
    the tests import tomllib (3.11), so a floor below 3.11 would promise a suite that cannot run."""
    floor = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["requires-python"]
    env = yaml.safe_load((ROOT / "environment.yml").read_text())
    conda_python = next(d for d in env["dependencies"] if isinstance(d, str) and _name(d) == "python")
    assert floor == ">=3.11" and conda_python == "python>=3.11", (floor, conda_python)
    needs_311 = [p.name for p in [*ROOT.glob("tests/*.py"), *ROOT.glob("voicelab/**/*.py")]
                 if re.search(r"^\s*(import tomllib|from tomllib)", p.read_text(), re.M)]
    assert needs_311, "nothing needs 3.11 any more: the floor may go down again (and this test with it)"


def test_notebooks_are_committed_without_outputs() -> None:
    notebooks = sorted((ROOT / "notebooks").glob("*.ipynb"))
    assert notebooks
    for path in notebooks:
        assert re.fullmatch(r"\d\d[a-z]?_[a-z_]+\.ipynb", path.name), path.name
        cells = json.loads(path.read_text())["cells"]
        dirty = [i for i, c in enumerate(cells) if c["cell_type"] == "code" and (c["outputs"] or c["execution_count"])]
        assert not dirty, f"{path.name}: cells {dirty} have outputs; `make strip` removes them before you commit"


def test_doctor_names_the_backend_that_start_broker_would_take(monkeypatch) -> None:
    monkeypatch.delenv("VOICELAB_AMQP_URL", raising=False)  # the notebooks' session exports one
    env = dict(os.environ)
    done = subprocess.run([sys.executable, "-m", "voicelab", "doctor"], capture_output=True, text=True, timeout=60,
                          env=env)
    assert done.returncode == 0, done.stderr
    backend, why = vb.choose_backend()
    verdict = [line for line in done.stdout.splitlines() if line.startswith("->")]
    assert len(verdict) == 1, done.stdout
    if backend == "none":
        assert "no broker can be had" in verdict[0]
    else:
        assert f": {backend} ({why})" in verdict[0], verdict[0]
    image = os.environ.get("VOICELAB_RABBITMQ_IMAGE") or vb.DEFAULT_IMAGE
    if backend == "container" and vb.may_fall_back() and not vb.image_present(image):
        assert "uses the local rabbitmq-server" in verdict[0], "doctor must announce the fallback before starting"


def test_build_script_is_packaged() -> None:
    from voicelab.cli import BUILD_SCRIPT

    text = BUILD_SCRIPT.read_text()
    assert "debootstrap" in text and "loopback_users.guest = false" in text


def test_the_wheel_holds_every_module_and_data_file(tmp_path: Path) -> None:
    """A non-editable install gets the whole package (a subpackage missing from pyproject once shipped no broker)."""
    src = tmp_path / "src"  # a copy without build/ and *.egg-info, which would hide a missing package
    shutil.copytree(ROOT, src, ignore=shutil.ignore_patterns(".venv", "build", "*.egg-info", ".git", "__pycache__"))
    done = subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps",
                           "-w", str(tmp_path), str(src)], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    (wheel,) = tmp_path.glob("voicelab-*.whl")
    shipped = {n for n in zipfile.ZipFile(wheel).namelist() if n.startswith("voicelab/")}
    source = {p.relative_to(ROOT).as_posix() for p in (ROOT / "voicelab").rglob("*")
              if p.is_file() and (p.suffix == ".py" or "data" in p.parts) and "__pycache__" not in p.parts}
    assert source - shipped == set(), "missing from the wheel: see [tool.setuptools] in pyproject.toml"


def _imports(path: Path, package: str) -> set[str]:
    """voicelab modules that the module at ``path`` imports (top level or inside functions).

    ``package``: the module's dotted name (for a package's ``__init__``, one level deeper), to resolve relative imports.
    """
    tree = ast.parse(path.read_text())
    here = package.split(".")
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            base = here[: len(here) - node.level] if node.level else []
            mod = ".".join(base + ([node.module] if node.module else []))
            if not mod.startswith("voicelab"):
                continue
            for alias in node.names:  # `from . import reaper` names a module
                candidate = f"{mod}.{alias.name}"
                found.add(candidate if _module_path(candidate) else mod)
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("voicelab")}
    return found


def _module_path(name: str) -> Path | None:
    base = ROOT.joinpath(*name.split("."))
    for candidate in (base.with_suffix(".py"), base / "__init__.py"):
        if candidate.exists():
            return candidate
    return None


@functools.cache
def _modules() -> tuple[tuple[str, Path, frozenset[str]], ...]:
    """Every module of voicelab: (dotted name, path, the voicelab modules it imports but itself)."""
    out = []
    for path in sorted((ROOT / "voicelab").rglob("*.py")):
        rel = path.relative_to(ROOT).with_suffix("")
        init = rel.name == "__init__"
        name = ".".join(rel.parts[:-1] if init else rel.parts)
        out.append((name, path, frozenset(_imports(path, name + ".x" if init else name) - {name})))
    return tuple(out)


def test_no_module_imports_one_that_imports_it_back() -> None:
    """voicelab's modules form layers: no import cycle, direct or longer (package __init__ files re-export only)."""
    graph = {name: imported for name, _, imported in _modules()}

    def cycle_from(start: str) -> list[str] | None:
        stack = [(start, [start])]
        seen = set()
        while stack:
            node, trail = stack.pop()
            for nxt in graph.get(node, ()):
                if nxt == start:
                    return trail + [start]
                if nxt not in seen and nxt in graph and not nxt.endswith("__init__"):
                    seen.add(nxt)
                    stack.append((nxt, trail + [nxt]))
        return None

    inits = {name for name, path, _ in _modules() if path.name == "__init__.py"}
    cycles = [c for n in graph if n not in inits and (c := cycle_from(n)) and not set(c[1:-1]) & inits]
    assert not cycles, f"import cycles: {cycles[:3]}"


LAB = ("voicelab.lab",)
TOOLS = ("voicelab.exercises", "voicelab.bench", "voicelab.cli", "voicelab.__main__")  # above library and lab


def _layer(name: str) -> str:
    """``"library"``, ``"lab"`` or ``"tools"``: the layer of module ``name`` (a package's modules share its layer)."""
    def within(packages: tuple[str, ...]) -> bool:
        return any(name == p or name.startswith(p + ".") for p in packages)

    return "lab" if within(LAB) else "tools" if within(TOOLS) else "library"


def test_the_library_never_imports_the_lab_or_the_tools() -> None:
    """Dependencies point down: tools (exercises, bench, CLI) -> lab -> library; never back up."""
    rank = {"library": 0, "lab": 1, "tools": 2}
    wrong = [f"{name} ({_layer(name)}) imports {imported} ({_layer(imported)})"
             for name, _, imports in _modules() for imported in imports if rank[_layer(imported)] > rank[_layer(name)]]
    assert not wrong, "\n".join(sorted(wrong))


def test_library_modules_import_no_plotting() -> None:
    """Library code runs in workers and child processes: matplotlib belongs to the lab."""
    offenders = [path.relative_to(ROOT).as_posix() for name, path, _ in _modules() if _layer(name) == "library"
                 and re.search(r"^\s*(import matplotlib|from matplotlib)", path.read_text(), re.M)]
    assert not offenders, offenders

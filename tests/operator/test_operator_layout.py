"""The top-level ``operator/`` folder must never shadow the standard library's ``operator``.

The folder's name is fixed by the repository layout, so its Python sources live one
level down (``operator/src/``, mapped to ``llmcache.operator`` by ``package-dir`` in
``pyproject.toml``) and ``operator/`` itself has no ``__init__.py``: an interpreter whose
``sys.path`` starts with the repository root then sees at most a namespace portion,
which loses to the stdlib's ``operator.py``.
"""

from __future__ import annotations

import os
import pkgutil
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

import llmcache.operator

ROOT = Path(__file__).resolve().parents[2]
SOURCES = ROOT / "operator" / "src"


def _env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONSTARTUP", "PYTHONSAFEPATH")}


@pytest.mark.parametrize("flags", [["-S"], []], ids=["no-site", "plain"])
def test_interpreter_started_in_repo_root_imports_stdlib_operator(flags: list[str]) -> None:
    # `-S` skips site.py, so nothing has imported `operator` before our `import re`:
    # this is exactly how the issue reproduced (`ImportError: cannot import name 'or_'`).
    code = "import re, operator, sys; print(operator.__file__); print(sys.path[0] == '')"
    proc = subprocess.run([sys.executable, *flags, "-c", code], cwd=ROOT, env=_env(),
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stderr
    operator_file, cwd_first = proc.stdout.split()
    assert cwd_first == "True"  # the repo root really was first on sys.path
    assert not Path(operator_file).resolve().is_relative_to(ROOT), operator_file


def test_operator_folder_has_no_python_at_its_top() -> None:
    top = ROOT / "operator"
    assert not (top / "__init__.py").exists(), "operator/__init__.py would shadow the stdlib `operator`"
    assert sorted(p.name for p in top.glob("*.py")) == []
    assert (SOURCES / "__init__.py").is_file()


def test_import_name_is_llmcache_operator_with_every_module() -> None:
    installed = {m.name for m in pkgutil.iter_modules(llmcache.operator.__path__)}
    in_tree = {p.stem for p in SOURCES.glob("*.py") if p.stem != "__init__"}
    assert in_tree and installed == in_tree


def test_regular_install_ships_llmcache_operator(tmp_path: Path) -> None:
    """A non-editable build (what the Dockerfiles do) maps operator/src to llmcache/operator."""
    src = tmp_path / "src"
    src.mkdir()
    # The same files the Dockerfiles copy before `pip install .`.
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, src / name)
    for folder in ("llmcache", "proxy", "model_server", "operator"):
        shutil.copytree(ROOT / folder, src / folder, ignore=shutil.ignore_patterns("__pycache__"))
    out = tmp_path / "wheel"
    proc = subprocess.run([sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "--no-build-isolation",
                           "-w", str(out), str(src)], cwd=tmp_path, env=_env(),
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    (wheel,) = out.glob("llmcache-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    shipped = {n.removeprefix("llmcache/operator/") for n in names if n.startswith("llmcache/operator/")}
    assert shipped == {p.name for p in SOURCES.glob("*.py")}
    assert not [n for n in names if n.startswith("operator/")]

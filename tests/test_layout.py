"""The package's layering, read from its source: loaders never reach for trainers or the renderer,
the library never imports its command line or the benchmarks, and no generic top-level module is
installed."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

import protosynth

PACKAGE = Path(protosynth.__file__).parent


def _module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _imports(path: Path) -> set[str]:
    """Every protosynth module ``path`` imports, at any depth of the file (function-level too)."""
    name = _module_name(path)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {m for m in found if m.split(".")[0] in ("protosynth", "benchmarks", "cli")}


def _graph() -> dict[str, set[str]]:
    return {_module_name(p): _imports(p) for p in PACKAGE.rglob("*.py")}


def _is(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def test_the_walk_sees_known_imports():
    graph = _graph()
    assert "protosynth.training.decoder" in graph
    assert "protosynth.render" in graph["protosynth.training.decoder"]  # trainers may render
    assert any(_is(m, "protosynth.models") for m in graph["protosynth.training.clip"])  # trainers load


def test_loaders_import_no_trainer_and_no_renderer():
    bad = {
        mod: sorted(m for m in deps if _is(m, "protosynth.training") or _is(m, "protosynth.render"))
        for mod, deps in _graph().items()
        if _is(mod, "protosynth.models")
    }
    assert {mod: deps for mod, deps in bad.items() if deps} == {}


def test_only_the_command_line_and_trainers_import_trainers():
    graph = _graph()
    bad = {
        mod: sorted(m for m in deps if _is(m, "protosynth.training"))
        for mod, deps in graph.items()
        if not (_is(mod, "protosynth.training") or _is(mod, "protosynth.cli"))
    }
    assert {mod: deps for mod, deps in bad.items() if deps} == {}


def test_library_imports_neither_cli_nor_benchmarks():
    graph = _graph()
    bad = {
        mod: sorted(m for m in deps if _is(m, "benchmarks") or _is(m, "cli") or _is(m, "protosynth.cli"))
        for mod, deps in graph.items()
        if not _is(mod, "protosynth.cli")
    }
    assert {mod: deps for mod, deps in bad.items() if deps} == {}


def test_no_generic_top_level_cli_module_is_installed(tmp_path):
    """Outside the checkout, ``import cli`` must fail while the ``protosynth`` command works."""
    gone = subprocess.run([sys.executable, "-c", "import cli"], cwd=tmp_path, capture_output=True, text=True)
    assert gone.returncode != 0 and "No module named 'cli'" in gone.stderr
    exe = Path(sys.executable).with_name("protosynth")
    shown = subprocess.run([str(exe), "--help"], cwd=tmp_path, capture_output=True, text=True)
    assert shown.returncode == 0 and "distill" in shown.stdout


def test_every_package_folder_is_declared():
    """setuptools warns ("Package would be ignored", 40 lines each) at every install about a folder
    with an importable name that holds files (at any depth) but is missing from pyproject's ``packages``."""
    tomllib = pytest.importorskip("tomllib")
    declared = set(tomllib.loads((PACKAGE.parent / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(d.relative_to(PACKAGE.parent).parts)
        for d in [PACKAGE, *PACKAGE.rglob("*")]
        if d.is_dir() and d.name != "__pycache__" and any(f.is_file() for f in d.rglob("*"))
    }
    importable = {name for name in folders if all(part.isidentifier() for part in name.split("."))}
    assert importable - declared == set()

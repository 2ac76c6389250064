"""The package's layering, read from its source: loaders never reach for trainers or the renderer,
the library never imports its command line or the benchmarks, no generic top-level module is
installed, and the engine stays out of the stages: no import loops, no ``importlib`` loading of our
own modules, no stage importing ``protosynth.engines.ray`` or ``ray``. Each of the last three checks is a
function that a synthetic violation is fed to, so each is shown to fail when it should."""

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
    return {m for m in _all_imports(path) if m.split(".")[0] in ("protosynth", "benchmarks", "cli")}


def _all_imports(path: Path) -> set[str]:
    """Every name the file ``path`` imports (see ``source_imports``)."""
    return source_imports(path.read_text(encoding="utf-8"), _module_name(path), path.name == "__init__.py")


def source_imports(source: str, name: str, is_package: bool = False) -> set[str]:
    """Every name the source of module ``name`` imports (modules and ``from`` names, relative ones
    made absolute), at any depth of the file: a function-level import is an import too."""
    package = name if is_package else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return found


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


# --- the engine stays out of the stages (issue 28) ---------------------------------------------------
#
# The import graph counts every import statement, function-level ones too: ``engines.base.make_engine``'s
# lazy ``from .ray.engine import RayEngine`` (lazy because Ray is an optional extra) is an edge like
# any other, and still closes no loop, because the Ray engine imports only ``engines.connect`` (the
# settings' checks and the Ray session), which imports neither ``engines.base`` nor any stage.

# The modules that may import Ray and the Ray engine: the engines package (the settings' Ray check
# and session, the factory, the Ray engine itself). Every other module is a stage or below one.
ENGINE_MODULES = ("protosynth.engines",)
# Modules whose ``importlib.import_module`` takes a computed name (never one of ours; read, then listed).
DYNAMIC_IMPORTERS = {"protosynth.models.decoders": "diffusers' module path of Karlo's text projection"}


def module_graph(imports: dict[str, set[str]]) -> dict[str, set[str]]:
    """``imports`` (module -> imported names) as module -> imported modules: each name is the longest
    module of the graph it starts with, plus the packages that module's import runs first; a
    module's own packages are left out (they are imported before it, never by it)."""
    graph: dict[str, set[str]] = {}
    for mod, names in imports.items():
        edges = set()
        for name in names:
            parts = name.split(".")
            found = [".".join(parts[:i]) for i in range(len(parts), 0, -1) if ".".join(parts[:i]) in imports]
            if found:
                edges |= set(_packages(found[0])) | {found[0]}
        graph[mod] = {m for m in edges - set(_packages(mod)) - {mod} if m in imports}
    return graph


def _packages(module: str) -> list[str]:
    """The packages that hold ``module``, outermost first (``a.b.c`` -> ``a``, ``a.b``)."""
    parts = module.split(".")
    return [".".join(parts[:i]) for i in range(1, len(parts))]


def import_loops(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import loops of ``graph``: each strongly connected group of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    loops: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                loops.append(sorted(group))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return loops


def own_dynamic_imports(source: str, module: str) -> list[str]:
    """``importlib.import_module`` / ``__import__`` calls in ``source`` that load one of our modules
    (a literal name starting ``protosynth`` or relative, also an f-string's literal start) or whose
    name is computed in a module not listed in DYNAMIC_IMPORTERS: ``line: call``."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Call):
            continue
        func = node.func
        called = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", None)
        if called not in ("import_module", "__import__") or not node.args:
            continue
        arg = node.args[0]
        if isinstance(arg, ast.JoinedStr):
            arg = arg.values[0] if arg.values else ast.Constant("")
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str):
            ours = arg.value.startswith(("protosynth", "."))
        else:
            ours = module not in DYNAMIC_IMPORTERS
        if ours:
            found.append(f"{node.lineno}: {ast.unparse(node)}")
    return found


def stages_importing_the_engine(imports: dict[str, set[str]]) -> dict[str, list[str]]:
    """Modules outside ENGINE_MODULES that import ``ray`` or ``protosynth.engines.ray`` (any depth of the file)."""
    bad = {}
    for mod, names in imports.items():
        if any(_is(mod, m) for m in ENGINE_MODULES):
            continue
        hits = sorted(n for n in names if _is(n, "ray") or _is(n, "protosynth.engines.ray"))
        if hits:
            bad[mod] = hits
    return bad


def _all_module_imports() -> dict[str, set[str]]:
    return {_module_name(p): _all_imports(p) for p in PACKAGE.rglob("*.py")}


def test_the_module_graph_sees_lazy_and_package_imports():
    graph = module_graph(_all_module_imports())
    assert "protosynth.engines.ray.engine" in graph["protosynth.engines.base"]  # the factory's function-level import
    assert "protosynth.passes" in graph["protosynth.prototypes"]  # ``from . import passes``
    assert "protosynth.corpora" in graph["protosynth.corpus"]  # ``corpora.base`` runs ``corpora/__init__``
    assert not any(m == "protosynth" for deps in graph.values() for m in deps)  # only ancestors import it


def test_the_package_has_no_import_loops():
    assert import_loops(module_graph(_all_module_imports())) == []


def test_no_importlib_loading_of_our_own_modules():
    bad = {
        _module_name(p): hits
        for p in PACKAGE.rglob("*.py")
        if (hits := own_dynamic_imports(p.read_text(encoding="utf-8"), _module_name(p)))
    }
    assert bad == {}


def test_no_stage_imports_ray_or_the_ray_engine():
    imports = _all_module_imports()
    assert stages_importing_the_engine(imports) == {}
    assert any(_is(n, "protosynth.engines.ray") for n in imports["protosynth.engines.base"])  # the one way in


def test_each_engine_check_catches_its_violation():
    """Synthetic graphs and sources with each violation: the checks above can fail."""
    loop = {"p.embed": {"p.onray.embed"}, "p.onray.embed": {"p.embed"}, "p.store": set()}
    assert import_loops(loop) == [["p.embed", "p.onray.embed"]]
    three = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert import_loops(three) == [["a", "b", "c"]]
    assert import_loops({"a": {"b"}, "b": set()}) == []
    lazy = "def f():\n    from .prototypes import assign\n"  # a function-level import closes a loop too
    imports = {
        "protosynth": set(),
        "protosynth.passes": source_imports(lazy, "protosynth.passes"),
        "protosynth.prototypes": {"protosynth.passes"},
    }
    assert import_loops(module_graph(imports)) == [["protosynth.passes", "protosynth.prototypes"]]

    hidden = (
        'import importlib\ndef onray(stage):\n    return importlib.import_module(f"protosynth.engines.ray.{stage}")\n'
    )
    assert own_dynamic_imports(hidden, "protosynth.engines.connect") == [
        "3: importlib.import_module(f'protosynth.engines.ray.{stage}')"
    ]
    assert own_dynamic_imports("from importlib import import_module\nimport_module('.embed', 'protosynth')\n", "x")
    assert own_dynamic_imports("__import__('protosynth.engines.ray.render')\n", "x")
    computed = "import importlib\nname = 'protosynth.engines.ray.embed'\nimportlib.import_module(name)\n"
    assert own_dynamic_imports(computed, "protosynth.engines.connect")
    assert own_dynamic_imports(computed, "protosynth.models.decoders") == []  # listed, read: diffusers only
    assert own_dynamic_imports("import importlib\nimportlib.import_module('diffusers.pipelines')\n", "x") == []

    for source in ("import ray\n", "def f():\n    import ray.data\n", "from .engines.ray import embed\n"):
        assert stages_importing_the_engine({"protosynth.embed": source_imports(source, "protosynth.embed")})
    assert stages_importing_the_engine({"protosynth.engines.base": {"protosynth.engines.ray.engine"}}) == {}
    assert stages_importing_the_engine({"protosynth.render": {"protosynth.engines.base", "rayon"}}) == {}


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


def test_the_set_format_imports_no_method():
    """``sets/`` is read by every method and verb: it must not sit above any of them (``report`` once
    imported all of ``baselines`` for a tuple of metric names and a three-line path rule)."""
    methods = ("protosynth.baselines", "protosynth.distill", "protosynth.coreset", "protosynth.training")
    bad = {
        mod: sorted(m for m in deps if any(_is(m, x) for x in methods))
        for mod, deps in _graph().items()
        if _is(mod, "protosynth.sets")
    }
    assert {mod: deps for mod, deps in bad.items() if deps} == {}


@pytest.mark.parametrize("module", ["protosynth.configs", "protosynth.corpora.index", "protosynth.baselines.configs"])
def test_light_modules_do_not_import_torch(module):
    """The configs behind --help and flag errors, and the corpus index a driver opens, stay light
    (torch costs seconds and hundreds of MiB): a module-level import of it there fails this."""
    code = f"import sys, {module}; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "False"
    lazy = "import sys, protosynth; protosynth.load_distilled; print('torch' in sys.modules)"
    assert (
        subprocess.run([sys.executable, "-c", lazy], capture_output=True, text=True, check=True).stdout.strip()
        == "True"
    )

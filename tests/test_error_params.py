"""The library's errors name its own parameters and the command line spells them as its flags
(``protosynth.errors.P``, ``protosynth.cli.flags``); the library never reads ``sys.argv``."""

from __future__ import annotations

import ast
import pickle
import re
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

import protosynth
from protosynth.cli.flags import FLAGS, VERB_FLAGS, cli_message
from protosynth.cli.main import app
from protosynth.distill import DistillConfig, validate
from protosynth.errors import P, ProtosynthError
from protosynth.prototypes import PrototypeConfig, build_prototypes
from protosynth.render import RenderConfig

PACKAGE = Path(protosynth.__file__).parent  # the library; the CLI installs from the top-level cli/ folder
CLI = Path(__file__).resolve().parent.parent / "cli"
FLAG = re.compile(r"(?<![\w-])--[a-z][a-z0-9-]*")


def _library_files() -> list[Path]:
    files = [p for p in PACKAGE.rglob("*.py") if "cli" not in p.relative_to(PACKAGE).parts]
    assert len(files) > 30  # the walk sees the library
    return files


def _trees():
    return [(p, ast.parse(p.read_text(encoding="utf-8"))) for p in _library_files()]


def _raised_class(node: ast.Raise) -> str | None:
    call = node.exc
    if isinstance(call, ast.Call):
        f = call.func
        return f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
    return None


def _error_classes(trees) -> set[str]:
    """ProtosynthError and every class the library derives from it."""
    names = {"ProtosynthError"}
    for _, tree in trees:
        for node in ast.walk(tree):
            if isinstance(node, ast.ClassDef) and any(
                getattr(b, "id", getattr(b, "attr", None)) in names for b in node.bases
            ):
                names.add(node.name)
    return names


def _flag_text(const: ast.Constant, in_fstring: bool) -> str | None:
    """A flag in a string constant, or an f-string part ending in ``--`` (a flag built from a name)."""
    if not isinstance(const.value, str):
        return None
    m = FLAG.search(const.value)
    if m:
        return m.group(0)
    return const.value if in_fstring and const.value.endswith("--") else None


def test_library_errors_name_no_flags():
    trees = _trees()
    classes = _error_classes(trees)
    found = []
    for path, tree in trees:
        for node in ast.walk(tree):
            if not (isinstance(node, ast.Raise) and _raised_class(node) in classes):
                continue
            fstrings = {id(v) for n in ast.walk(node.exc) if isinstance(n, ast.JoinedStr) for v in n.values}
            for sub in ast.walk(node.exc):
                if isinstance(sub, ast.Constant) and (flag := _flag_text(sub, id(sub) in fstrings)):
                    found.append(f"{path.relative_to(PACKAGE.parent)}:{sub.lineno}: {flag!r}")
    assert found == [], "library errors must name parameters through protosynth.errors.P:\n" + "\n".join(found)


def test_the_flag_check_catches_a_flag():
    tree = ast.parse(
        'raise ProtosynthError(f"--budget must be at least 1, got {b}")\n'
        'raise ProtosynthError(f"--{name} must be at least 1")\n'
    )
    hits = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Raise):
            fstrings = {id(v) for n in ast.walk(node.exc) if isinstance(n, ast.JoinedStr) for v in n.values}
            hits += [_flag_text(c, id(c) in fstrings) for c in ast.walk(node.exc) if isinstance(c, ast.Constant)]
    assert [h for h in hits if h] == ["--budget", "--"]


def test_no_string_constant_of_the_library_names_a_flag_outside_docstrings():
    """Tables and templates that end up in messages (decoder capabilities, log lines) too; the
    exceptions are labels of written reports, which describe how the command line ran."""
    allowed = {
        ("baselines/compare.py", " (--quick: a smoke run)"),  # compare.md's title
        (
            "evaluation/evaluate.py",
            "best checkpoint on the test split (--select-on-test; model selection on test, as the reference code does)",
        ),
    }  # a label stored in results
    found = []
    for path, tree in _trees():
        docs = {
            id(n.body[0].value)
            for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body
            and isinstance(n.body[0], ast.Expr)
            and isinstance(n.body[0].value, ast.Constant)
        }
        rel = str(path.relative_to(PACKAGE).as_posix())
        for node in ast.walk(tree):
            if (
                isinstance(node, ast.Constant)
                and isinstance(node.value, str)
                and id(node) not in docs
                and FLAG.search(node.value)
                and (rel, node.value) not in allowed
            ):
                found.append(f"{rel}:{node.lineno}: {node.value[:80]!r}")
    assert found == []


def test_library_reads_no_sys_argv():
    found = []
    for path, tree in _trees():
        for node in ast.walk(tree):
            argv = (
                isinstance(node, ast.Attribute)
                and node.attr == "argv"
                and isinstance(node.value, ast.Name)
                and node.value.id == "sys"
            )
            imported = (
                isinstance(node, ast.ImportFrom) and node.module == "sys" and any(a.name == "argv" for a in node.names)
            )
            if argv or imported:
                found.append(f"{path.relative_to(PACKAGE.parent)}:{node.lineno}")
    assert found == [], "the command line passes the command in (see cli.common.command_line)"


def _references(tree) -> set[str]:
    """Parameter names a module refers to: ``P.a.b`` chains, ``Param("x")``, and ``Param(name)`` in
    a loop over a tuple of names."""
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            chain, cur = [], node
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if isinstance(cur, ast.Name) and cur.id == "P":
                names.add(".".join(reversed(chain)))
        if isinstance(node, ast.For) and isinstance(node.iter, ast.Tuple):
            calls = [c for c in ast.walk(node) if isinstance(c, ast.Call) and getattr(c.func, "id", None) == "Param"]
            if calls:
                names.update(e.value for e in node.iter.elts if isinstance(e, ast.Constant))
        if (
            isinstance(node, ast.Call)
            and getattr(node.func, "id", None) == "Param"
            and node.args
            and isinstance(node.args[0], ast.Constant)
        ):
            names.add(node.args[0].value)
    return names


def test_every_parameter_the_library_names_is_in_the_flag_table():
    refs = set().union(*(_references(tree) for _, tree in _trees()))
    # prefixes of a dotted chain (P.render of P.render.strength) are not references of their own
    refs = {r for r in refs if not any(o.startswith(r + ".") for o in refs)}
    assert {"budget", "render.strength", "decoder.guidances", "experts", "lr_img"} <= refs  # the walk sees them
    assert sorted(refs - set(FLAGS)) == []
    assert all(f is None or FLAG.fullmatch(f) for f in FLAGS.values())


def _verbs() -> set[str]:
    def name(info) -> str:
        return info.name or info.callback.__name__.replace("_", "-")

    verbs = {name(c) for c in app.registered_commands}
    for group in app.registered_groups:
        verbs |= {f"{group.name} {name(c)}" for c in group.typer_instance.registered_commands}
    return verbs


def test_every_verb_reports_library_errors_as_itself():
    """Each ``run(...)`` of the CLI names its verb (whose VERB_FLAGS entries then win)."""
    verbs = _verbs()
    assert {"distill", "models calibrate", "eval retrieval", "compare-baselines"} <= verbs
    assert set(VERB_FLAGS) <= verbs
    runs = []
    for path in CLI.glob("*.py"):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Call) and getattr(node.func, "id", None) == "run":
                verb = next((k.value.value for k in node.keywords if k.arg == "verb"), None)
                runs.append((path.name, node.lineno, verb))
    assert len(runs) >= 11
    assert [r for r in runs if r[2] not in verbs] == []


def test_the_library_says_budget_and_the_command_line_says_flag(tmp_path):
    with pytest.raises(ProtosynthError) as exc:
        validate(DistillConfig(method="pds", budget=0, out=tmp_path / "out"))
    assert str(exc.value) == "budget must be at least 1, got 0" and exc.value.param == "budget"
    assert "--" not in repr(exc.value)
    assert cli_message(exc.value, "distill") == "--budget must be at least 1, got 0"

    img = np.random.default_rng(0).normal(size=(20, 8)).astype(np.float32)
    with pytest.raises(ProtosynthError, match=r"^budget 21 is larger than the corpus's 20 pairs$"):
        build_prototypes(img, img.copy(), PrototypeConfig(budget=21))

    r = CliRunner().invoke(app, ["distill", "--method", "pds", "--budget", "0", "--out", str(tmp_path / "out")])
    assert r.exit_code == 2 and r.stderr.strip().splitlines() == ["error: --budget must be at least 1, got 0"]
    assert not (tmp_path / "out").exists()


def test_nested_settings_and_hints(tmp_path):
    with pytest.raises(ProtosynthError) as exc:
        validate(
            DistillConfig(method="pds", budget=4, render=RenderConfig(init="nearest", strength=1.5), out=tmp_path / "o")
        )
    assert str(exc.value) == "render.strength must be in (0, 1], got 1.5" and exc.value.param == "render.strength"
    assert cli_message(exc.value) == "--strength must be in (0, 1], got 1.5"

    (tmp_path / "o").mkdir()
    (tmp_path / "o" / "notes.txt").write_text("mine")
    with pytest.raises(ProtosynthError) as exc:
        validate(DistillConfig(method="pds", budget=4, out=tmp_path / "o"))
    why = "exists and is not a distilled set (no manifest.json); name another folder"
    assert str(exc.value) == f"out {tmp_path / 'o'} {why}"
    assert cli_message(exc.value) == f"--out {tmp_path / 'o'} {why}"
    r = CliRunner().invoke(app, ["distill", "--method", "pds", "--budget", "4", "--out", str(tmp_path / "o")])
    assert r.exit_code == 2 and r.stderr.strip() == f"error: {cli_message(exc.value)}"


def test_a_verb_entry_wins_over_the_shared_table(tmp_path):
    error = ProtosynthError(f"{P.out} {tmp_path}: no clip/open_clip_config.json")
    assert str(error).startswith("out ") and cli_message(error).startswith("--out ")
    assert cli_message(error, "models calibrate").startswith("--models ")


def test_references_survive_pickling():
    """DataLoader workers and compare-baselines' child processes hand errors back pickled."""
    error = ProtosynthError(f"{P.test('SPEC')} is missing; see {P.decoder.guidances}", param="test")
    back = pickle.loads(pickle.dumps(error))
    assert str(back) == str(error) == "test=SPEC is missing; see decoder.guidances"
    assert back.param == "test" and back.args == error.args
    assert cli_message(back) == "--test SPEC is missing; see --guidances"


def test_a_message_without_references_is_unchanged():
    error = ProtosynthError("corpus x.jsonl line 4: not valid JSON {'a': 1}")
    assert str(error) == cli_message(error) == "corpus x.jsonl line 4: not valid JSON {'a': 1}"
    assert error.param is None

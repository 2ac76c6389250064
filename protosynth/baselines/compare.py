"""``protosynth compare-baselines``: every method at one budget, one protocol, one table.

Steps, each resumable (a finished step is reused when the command is run again):
1. buffers: ``OUT/buffers/full`` (MTT-VL, LoRS, AMD) and ``OUT/buffers/heads`` (RepBlend);
2. one set per method in ``OUT/sets/<method>-b<budget>``, each made in its own child process so its
   seconds and peak memory are its own (buffer cost is reported separately);
3. one evaluation of all sets under the protocol (plus ``full``, the upper bound), a row per
   method cached in ``OUT/rows``;
4. ``OUT/compare.json``, ``compare.md`` and ``compare.png`` (r_mean with std bars; distillation
   seconds and peak memory per method).

``--quick`` shrinks everything to a smoke-sized run: on the default world, its first 2,000 images
(10,000 pairs; the test split is the usual one); buffers of 2 experts x 2 epochs on 2,000
pairs, 10 matching iterations, forgetting from 1 epoch, evaluation with 20 epochs (the full row:
1 epoch) and 2 repeats. Its numbers show the machinery works, not how the methods rank.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import sys
import time
from dataclasses import replace
from pathlib import Path

from ..coreset import CoresetConfig, build_coreset
from ..corpora.source import CorpusReading, flat_settings
from ..corpora.spec import canonical_root, canonical_spec, is_world
from ..corpus import load_source
from ..embed import embed_corpus
from ..errors import P, ProtosynthError
from ..evaluation.data import corpus_text_features
from ..evaluation.evaluate import EvalConfig
from ..evaluation.metrics import METRICS
from ..evaluation.protocols import get_protocol
from ..models.clip import load_clip
from ..models.text_encoders import load_text_encoder
from ..sets.comparison import set_folder
from ..util.files import atomic_path, check_writable, git_commit, write_text_atomic
from ..util.runinfo import check_device
from .buffer import BufferConfig, build_buffer, load_buffer
from .compare_rows import evaluate_full, evaluate_group, pooled
from .compare_rows import row_key as _row_key  # noqa: F401 (its earlier home, where tests read it)
from .configs import (  # noqa: F401 (re-exported: its public home)
    ALL_METHODS,
    COMPARE_TEXTS,
    CORESETS,
    OPTIMISATION,
    QUICK_WORLD,
    RENDERED,
    CompareConfig,
    rendered_distill,
)
from .presets import SIMILARITY_KEYS, USES_SIMILARITY, BaselineConfig, buffer_kind, default_family, preset, resolve
from .run import distill_baseline


def _validate(cfg: CompareConfig) -> None:
    """The values (``CompareConfig.check``), then that the corpus has a test split, and the device."""
    cfg.check()
    if cfg.test is None and not is_world(cfg.corpus.spec):
        raise ProtosynthError(
            f"{P.corpus} {cfg.corpus.spec} has no built-in test split; pass {P.test('SPEC')}", param="test"
        )
    check_device(cfg.device)


def buffer_config(cfg: CompareConfig, heads: bool) -> BufferConfig:
    """The expert buffer a comparison in ``cfg.out`` makes (and a preset sweep shares: same folder, same settings)."""
    return BufferConfig(
        corpus=cfg.corpus,
        protocol=cfg.protocol,
        experts=cfg.experts,
        epochs=cfg.expert_epochs,
        heads_only=heads,
        max_pairs=cfg.buffer_pairs,
        seed=cfg.seed,
        device=cfg.device,
        out=cfg.out / "buffers" / ("heads" if heads else "full"),
    )


def _prepare(cfg: CompareConfig) -> None:
    """The caches several methods share (the CLIP embeddings of the corpus, the protocol's text
    features of every caption), filled once up front so no method's seconds include them."""

    corpus = load_source(cfg.corpus)
    embed_corpus(corpus, load_clip("default", cfg.device))
    protocol = get_protocol(cfg.protocol)
    if protocol.text != "clip":
        corpus_text_features(corpus, load_text_encoder(protocol.text))


def _make_set(method: str, cfg: CompareConfig, out: Path, buffers: dict[str, Path]) -> None:
    """Runs in a child process: one method's set at ``out``."""
    if method == "prepare":
        _prepare(cfg)
    elif method in ("buffer-full", "buffer-heads"):
        build_buffer(buffer_config(cfg, method == "buffer-heads"))
    elif method in CORESETS:
        build_coreset(
            CoresetConfig(
                method=method,
                budget=cfg.budget,
                corpus=cfg.corpus,
                seed=cfg.seed,
                out=out,
                device=cfg.device,
                forgetting_protocol=cfg.protocol,
                forgetting_epochs=1 if cfg.quick else 5,
            )
        )
    elif method in ("select", *RENDERED):
        from ..distill import distill  # noqa: PLC0415 (each spawned step imports this module; only pds renders, and diffusers costs seconds)

        common = dict(budget=cfg.budget, corpus=cfg.corpus, seed=cfg.seed, out=out, device=cfg.device)
        distill(rendered_distill(method, **common))
    else:
        distill_baseline(_baseline_config(method, cfg, out, buffers))


def _buffer_kind(method: str) -> str | None:
    """The expert buffer an optimisation method matches: ``heads`` (RepBlend) or ``full``; None otherwise."""

    return buffer_kind(method) if method in OPTIMISATION else None


def _baseline_config(method: str, cfg: CompareConfig, out: Path, buffers: dict[str, Path]):

    return BaselineConfig(
        method=method,
        budget=cfg.budget,
        buffer=buffers[_buffer_kind(method)],
        out=out,
        seed=cfg.seed,
        device=cfg.device,
        quick=cfg.quick,
        iterations=cfg.iterations,
        reading=CorpusReading(**cfg.corpus.options()),
    )


def _stale_reason(method: str, cfg: CompareConfig, out: Path, buffers: dict[str, Path]) -> str | None:
    """Why a finished set in ``out`` does not answer this run (another corpus, seed or budget, or,
    for an optimisation method, other preset values, e.g. after a preset changed), or None.
    Reusing such a set silently would put a row made one way into a table that says another."""
    man = json.loads((out / "manifest.json").read_text())
    corpus, source = man.get("corpus", {}), cfg.corpus
    wanted = {
        "corpus": (corpus.get("spec"), source.spec),
        "seed": (man.get("seed"), cfg.seed),
        "budget": (man.get("budget"), cfg.budget),
        "image-root": (corpus.get("image_root"), None if source.image_root is None else str(source.image_root)),
        "skip-bad": (bool(corpus.get("skip_bad")), source.skip_bad),
        "image-column": (corpus.get("image_column"), source.image_column),
        "caption-column": (corpus.get("caption_column"), source.caption_column),
    }
    if method in OPTIMISATION:
        bcfg = _baseline_config(method, cfg, out, buffers)
        family = default_family(cfg.corpus.spec)
        resolved = resolve(bcfg, family, load_buffer(bcfg.buffer).epochs)
        # sets made before --lr-space learned linearly, before train mode in eval mode
        recorded = {"lr_space": "linear", "train_mode": False, **man.get("settings", {})}
        keys = [
            k
            for k in preset(method, family, cfg.budget, cfg.quick)
            if method in USES_SIMILARITY or k not in SIMILARITY_KEYS
        ]
        wanted.update({k.replace("_", "-"): (recorded.get(k), getattr(resolved, k)) for k in keys})
    diff = [f"{k} {was} (now {now})" for k, (was, now) in wanted.items() if was != now]
    return ", ".join(diff) or None


def _refuse_if_stale(method: str, cfg: CompareConfig, out: Path, buffers: dict[str, Path]) -> None:
    if reason := _stale_reason(method, cfg, out, buffers):
        raise ProtosynthError(
            f"compare-baselines: {out} was made with other settings ({reason}); "
            f"delete it to remake it, or use another {P.out}"
        )


def _finished(folder: Path) -> bool:
    """A set or buffer folder is finished when its manifest (written last) is there."""
    return (folder / "manifest.json").is_file()


def _in_child(method: str, cfg: CompareConfig, out: Path | None, buffers: dict[str, Path]) -> None:
    """Run one step in a fresh (spawned) process, so its peak memory is its own plus a bare
    interpreter, not this process's (Linux carries the parent's peak RSS across fork and exec)."""
    ctx = mp.get_context("spawn")
    reader, writer = ctx.Pipe(duplex=False)
    proc = ctx.Process(target=_child_main, args=(method, cfg, out, buffers, writer))
    proc.start()
    writer.close()  # the child holds the only writer: recv() ends when it exits
    try:
        error = reader.recv()
    except EOFError:
        error = None
    proc.join()
    if error is not None:  # bad input (a missing image, a wrong --image-root): the user's one line
        raise ProtosynthError(f"compare-baselines, {method} step: {error.template}", param=error.param)
    if proc.exitcode != 0:
        raise ProtosynthError(
            f"compare-baselines: the {method} step failed (exit code {proc.exitcode}); "
            f"see the message above, fix it and run again (finished methods are kept)"
        )


def _child_main(method: str, cfg: CompareConfig, out: Path, buffers: dict[str, Path], errors) -> None:
    """A ProtosynthError goes back to the parent (pickled whole, so the parameters it names stay
    references the command line spells as flags), which reports it as its own one-line error."""
    try:
        _make_set(method, cfg, out, buffers)
    except ProtosynthError as exc:
        errors.send(exc)
        sys.exit(2)


def set_path(cfg: CompareConfig, method: str, seed: int) -> Path:
    """A method's set at ``seed``: the first set seed keeps the folder a one-seed comparison used (so
    earlier folders resume and ``report`` finds its samples); the others add ``-s<seed>``."""
    folder = set_folder(cfg.out, method, cfg.budget)
    return folder if seed == cfg.set_seeds()[0] else folder.with_name(f"{folder.name}-s{seed}")


def _make_sets(cfg: CompareConfig, buffers: dict[str, Path]) -> tuple[dict[tuple[str, int], Path], float]:
    """Every (method, set seed) set, made where not finished (stale ones refused first); the seconds
    the shared preparation took in this run. Buffers are shared by every set seed."""
    sets = {(m, s): set_path(cfg, m, s) for m in cfg.methods if m != "full" for s in cfg.set_seeds()}
    seeded = {key: replace(cfg, seed=key[1]) for key in sets}
    # refuse a stale set before minutes of preparation, not after; a set whose buffer is not there yet
    # is checked once the buffer is built
    unchecked = []
    for (method, seed), out in sets.items():
        if not _finished(out):
            continue
        if _buffer_kind(method) is None or _finished(buffers[_buffer_kind(method)]):
            _refuse_if_stale(method, seeded[method, seed], out, buffers)
        else:
            unchecked.append((method, seed))
    t0 = time.time()
    if not all(_finished(b) for b in buffers.values()) or not all(_finished(o) for o in sets.values()):
        _in_child("prepare", cfg, None, {})  # a resumed run with nothing left to make skips it (a process start)
    prepare_seconds = round(time.time() - t0, 1)
    for kind in buffers:
        if not _finished(buffers[kind]):
            _in_child(f"buffer-{kind}", cfg, None, {})
    for key, out in sets.items():
        if not _finished(out):
            _in_child(key[0], seeded[key], out, buffers)
        elif key in unchecked:
            _refuse_if_stale(key[0], seeded[key], out, buffers)
    return sets, prepare_seconds


def _buffer_cost(buffers: dict[str, Path]) -> dict:
    cost = {}
    for kind, folder in buffers.items():
        man = load_buffer(folder).manifest
        cost[kind] = {
            "seconds": man["seconds"],
            "peak_memory_mb": man["peak_memory_mb"],
            "experts": man["settings"]["experts"],
            "epochs": man["settings"]["epochs"],
            "trained_on_pairs": man["corpus"]["trained_on"],
        }
    return cost


def _tables(cfg: CompareConfig, sets: dict[tuple[str, int], Path]) -> tuple[list[dict], dict]:
    """One table per (recipe, text reading), rows in ``cfg.methods`` order; the evaluation's header."""
    base = EvalConfig(
        protocol=cfg.protocol,
        repeats=cfg.repeats,
        seed=cfg.seed,
        device=cfg.device,
        epochs=cfg.eval_epochs,
        test=cfg.test,
        reading=CorpusReading(
            image_root=cfg.corpus.image_root,
            image_column=cfg.corpus.image_column,
            caption_column=cfg.corpus.caption_column,
        ),
    )
    full = None
    if "full" in cfg.methods:  # its own epochs (--quick: 1), never the sets' --eval-epochs
        full_cfg = replace(
            base,
            full=cfg.corpus.spec,
            epochs=1 if cfg.quick else None,
            reading=replace(base.reading, skip_bad=cfg.corpus.skip_bad),
        )
        full = evaluate_full(cfg.out, full_cfg)
    head = full["head"] if full else None
    tables = []
    for recipe in cfg.recipes:
        for text in cfg.texts:
            rows = evaluate_group(cfg.out, sets, replace(base, recipe=recipe, text=text))
            head = head or next((r["head"] for r in rows.values() if "head" in r), None)
            table = []
            for method in cfg.methods:
                if method == "full":
                    table.append(dict(pooled("full", {cfg.seed: full}), set_seeds=[], recipe=recipe))
                    continue
                per_seed = {s: rows[method, s] for s in cfg.set_seeds()}
                table.append(dict(pooled(method, per_seed), recipe=recipe))
            tables.append({"recipe": recipe, "text": text, "methods": table})
    return tables, head or {}


def _set_costs(row: dict, path: Path) -> None:
    """The set's own seconds and peak memory (of the first set seed's set)."""
    man = json.loads((path / "manifest.json").read_text())
    secs = man.get("seconds", {})
    row["distill_seconds"] = secs.get("total", round(sum(v for v in secs.values() if isinstance(v, (int, float))), 2))
    row["peak_memory_mb"] = man.get("peak_memory_mb")
    row["buffer"] = _buffer_kind(row["method"])


def _relative(table: list[dict]) -> None:
    """Cost against PDS's and r_mean against random pairs', within one table."""
    pds = next((r for r in table if r["method"] == "pds"), None)
    random = next((r for r in table if r["method"] == "random" and "metrics" in r), None)
    for row in table:
        if pds and row.get("total_seconds") is not None and pds.get("total_seconds"):
            row["cost_vs_pds"] = round(row["total_seconds"] / pds["total_seconds"], 2)
        if random is not None and "metrics" in row:
            row["gain_over_random"] = round(row["metrics"]["r_mean"]["mean"] - random["metrics"]["r_mean"]["mean"], 2)


def compare_baselines(cfg: CompareConfig, command: str | None = None) -> dict:
    """Run (or resume) the comparison; returns the compare.json document. ``command``: the command
    line that asked for it, recorded in the document (None from Python)."""
    _validate(cfg)
    cfg = cfg.effective()
    # absolute paths, as the manifests of the sets and buffers record them (so reuse checks compare like with like)
    source = cfg.corpus
    cfg = replace(
        cfg,
        corpus=replace(source, spec=canonical_spec(source.spec), image_root=canonical_root(source.image_root)),
        test=None if cfg.test is None else canonical_spec(cfg.test),
    )
    started = time.time()
    check_writable(cfg.out, f"{P.out} {cfg.out}")
    cfg.out.mkdir(parents=True, exist_ok=True)
    needed = {_buffer_kind(m) for m in cfg.methods}
    buffers = {kind: buffer_config(cfg, kind == "heads").out for kind in ("full", "heads") if kind in needed}
    sets, prepare_seconds = _make_sets(cfg, buffers)
    buffer_cost = _buffer_cost(buffers)
    tables, head = _tables(cfg, sets)
    first = {m: sets[m, cfg.set_seeds()[0]] for m in cfg.methods if m != "full"}
    for table in tables:
        for row in table["methods"]:
            if row["method"] in first:
                _set_costs(row, first[row["method"]])
        _add_costs(table["methods"], first, buffer_cost)
        _relative(table["methods"])
    doc = {
        "budget": cfg.budget,
        "corpus": cfg.corpus.spec,
        "quick": cfg.quick,
        "protocol": head.get("protocol"),
        "repeats": cfg.repeats,
        "set_seeds": list(cfg.set_seeds()),
        "score": head.get("score"),
        "eval_epochs": cfg.eval_epochs,
        "test": head.get("test"),
        "buffers": buffer_cost,
        # the headline: the first recipe and reading, scored rows only (``report`` reads it)
        "recipe": tables[0]["recipe"],
        "text": tables[0]["text"],
        "methods": [r for r in tables[0]["methods"] if "metrics" in r],
        "tables": tables,
        "shared_preparation_seconds": prepare_seconds,
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in flat_settings(cfg).items()},
        "command": command,
        "commit": git_commit(),
        "seconds_this_run": round(time.time() - started, 1),
    }
    write_text_atomic(cfg.out / "compare.json", json.dumps(doc, indent=2))
    write_text_atomic(cfg.out / "compare.md", markdown(doc))
    plot(doc, cfg.out / "compare.png")
    return doc


# The pretrained models each method uses to make its set (every method is evaluated with the protocol's)
PRETRAINED = {
    **{m: "CLIP, unCLIP decoder" for m in RENDERED},
    "herding": "CLIP",
    "kcenter": "CLIP",
    "select": "CLIP",
    "random": "none",
    "forgetting": "protocol backbone + text encoder",
    **{m: "protocol backbone + text encoder (buffers)" for m in OPTIMISATION},
}


def _add_costs(table: list[dict], paths: dict[str, Path | None], buffer_cost: dict) -> None:
    """Cost from corpus to set: each method's own seconds, plus the shared work it needs, counted in
    full for each method that needs it: the CLIP embedding store (PDS, herding, k-center; its
    recorded compute time, even when this run read it from the cache) or the expert buffers (the
    trajectory-matching methods)."""
    for row in table:
        method, path = row["method"], paths.get(row["method"])
        row["pretrained"] = PRETRAINED.get(method, "-")
        if path is None or row.get("distill_seconds") is None:
            continue
        shared, what = 0.0, []
        if method in ("select", "herding", "kcenter", *RENDERED):
            embed = json.loads((path / "manifest.json").read_text()).get("embed_compute_seconds")
            if embed is None:
                row["total_seconds"] = None  # the store's cost was not recorded: no honest total
                row["shared_seconds"] = None
                continue
            shared, what = float(embed), ["CLIP embeddings"]
        elif method in OPTIMISATION:
            shared, what = float(buffer_cost[_buffer_kind(method)]["seconds"]), [f"buffer {_buffer_kind(method)}"]
        row["shared_seconds"], row["shared_work"] = round(shared, 1), what
        row["total_seconds"] = round(row["distill_seconds"] + shared, 1)


RECIPE_TITLES = {
    "protocol": "every row trained by the protocol's recipe (stored soft labels and learned lrs ignored)",
    "own": "each method's own recipe where its set stores one (soft labels, learned lrs, frozen backbone); "
    "the protocol's for the others",
    "soft-labels": "the protocol's recipe plus a set's stored soft labels (its S), nothing else of its own "
    "(DD-Ranking's separate toggle)",
    "learned-lrs": "the protocol's recipe plus a set's learned inner lrs, nothing else of its own "
    "(DD-Ranking's separate toggle)",
}


def markdown(doc: dict) -> str:
    seeds = doc.get("set_seeds", [doc.get("settings", {}).get("seed", 0)])
    lines = [
        f"# compare-baselines: budget {doc['budget']}, corpus {doc['corpus']}, protocol {doc['protocol']}, "
        f"{doc['repeats']} repeats, score = {doc['score']}" + (" (--quick: a smoke run)" if doc["quick"] else ""),
        "",
        (f"Command: `{doc['command']}`" if doc.get("command") else "Run from the Python API")
        + f" (commit {str(doc.get('commit', ''))[:12]}).",
        "",
        f"Mean ± sample std over set seeds x repeats (set seeds {', '.join(map(str, seeds))}; n = set seeds x "
        "repeats per row), percent; gain = r_mean minus random pairs' in the same table. Cost from corpus to "
        "set (the first set seed's): the method's own seconds and peak memory (its process), plus the shared "
        "work it needs (the CLIP embedding store, or the expert buffers listed below), counted in full for "
        "every method that needs it. The full-data row is one run, the same in every table.",
    ]
    tables = doc.get("tables") or [{"recipe": None, "text": None, "methods": doc["methods"]}]
    for table in tables:
        if table["recipe"] is not None:
            lines += [
                "",
                f"## recipe {table['recipe']}, text {table['text']}",
                "",
                RECIPE_TITLES[table["recipe"]] + ".",
            ]
        lines += ["", *_table_lines(table["methods"])]
    lines.append(
        f"\nShared preparation (CLIP embeddings and text features of the corpus, cached; not in any "
        f"method's seconds): {doc.get('shared_preparation_seconds', 0):.0f} s in this run."
    )
    for kind, b in doc["buffers"].items():
        lines.append(
            f"\nBuffer `{kind}`: {b['experts']} experts x {b['epochs']} epochs on {b['trained_on_pairs']} pairs, "
            f"{b['seconds']:.0f} s, peak {b['peak_memory_mb']:.0f} MB."
        )
    return "\n".join(lines) + "\n"


def _table_lines(rows: list[dict]) -> list[str]:
    lines = [
        "| method | " + " | ".join(METRICS) + " | n | text read | loss, lrs | gain over random | pretrained | own s "
        "| shared s | total s | peak MB | total vs PDS |",
        "|---|" + "---|" * (len(METRICS) + 10),
    ]

    def num(value, fmt: str) -> str:
        return format(value, fmt) if value is not None else "-"

    for row in rows:
        if "metrics" not in row:
            lines.append(f"| {row['method']} | not scored: {row.get('unsupported', '-')} |")
            continue
        cells = [f"{row['metrics'][k]['mean']:.1f} ± {row['metrics'][k]['std']:.1f}" for k in METRICS]
        n = len(row["metrics"]["r_mean"].get("runs", []))
        seeds = len(row.get("set_seeds") or []) or 1
        extra = [
            f"{n} ({seeds}x{n // seeds})" if n else "-",
            row.get("text", "-"),
            f"{row.get('loss', 'info_nce')}, {'learned' if row.get('learned_lrs') else 'protocol'}"
            + (", frozen+head" if row.get("image_side") == "frozen+head" else ""),
            num(row.get("gain_over_random"), "+.1f"),
            row.get("pretrained", "-"),
            num(row.get("distill_seconds"), ".0f"),
            num(row.get("shared_seconds"), ".0f"),
            num(row.get("total_seconds"), ".0f"),
            num(row.get("peak_memory_mb") or None, ".0f"),
            num(row.get("cost_vs_pds"), ".2f") + ("x" if row.get("cost_vs_pds") is not None else ""),
        ]
        lines.append(f"| {row['method']} | " + " | ".join(cells) + " | " + " | ".join(extra) + " |")
    return lines


def plot(doc: dict, path: Path) -> None:
    import matplotlib  # noqa: PLC0415 (only the plot needs it, and it takes about a second to import)

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt  # noqa: PLC0415 (after matplotlib.use, which must come first)

    rows = doc["methods"]
    names = [r["method"] for r in rows]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
    ax1.bar(
        names,
        [r["metrics"]["r_mean"]["mean"] for r in rows],
        yerr=[r["metrics"]["r_mean"]["std"] for r in rows],
        capsize=3,
        color="tab:blue",
    )
    ax1.set_ylabel("r_mean (%)")
    recipe = f", recipe {doc['recipe']}, text {doc['text']}" if "recipe" in doc else ""
    ax1.set_title(f"retrieval, budget {doc['budget']} ({doc['protocol']}, {doc['repeats']} repeats{recipe})")
    made = [r for r in rows if r.get("distill_seconds") is not None]
    ax2.bar([r["method"] for r in made], [r["distill_seconds"] for r in made], color="tab:orange")
    ax2.set_ylabel("distillation seconds")
    ax2.set_yscale("log")
    twin = ax2.twinx()
    twin.plot([r["method"] for r in made], [r.get("peak_memory_mb") or 0 for r in made], "ko-", label="peak MB")
    twin.set_ylabel("peak memory (MB)")
    ax2.set_title("cost (buffers not included)")
    for ax in (ax1, ax2):
        ax.tick_params(axis="x", rotation=45)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, dpi=110, format="png")
    plt.close(fig)

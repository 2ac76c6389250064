"""``--engine ray``: embedding, clustering and rendering on a real local Ray instance (no mocks).

One Ray instance for the whole session (2 CPUs, as on the development machine). Every comparison
runs the local engine with one torch thread, the thread count of a Ray actor with one CPU: the same
thread count gives the same bits (docs/scale.md), so the Ray engine's files must equal the local
engine's byte for byte.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from functools import partial
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from helpers import assert_one_line_error, embed_cmd, kill_at_first_shard, png_bytes, store_bytes, truncate, write_tar
from PIL import Image
from typer.testing import CliRunner

import protosynth.corpora.index as corpus_index
import protosynth.engines.connect as engine_module
from protosynth.cli.main import app
from protosynth.corpora.shapes import WorldConfig, generate_split
from protosynth.corpus import load_corpus
from protosynth.distill import DistillConfig, distill
from protosynth.embed import EmbedConfig, embed_corpus
from protosynth.engines.connect import EngineConfig, check_engine
from protosynth.errors import ProtosynthError
from protosynth.prototypes import PrototypeConfig, build_prototypes
from protosynth.render import RenderConfig

ray = pytest.importorskip("ray", reason="Ray is not installed (pip install -e '.[ray]'): the Ray engine is untested")

from protosynth.engines.ray.cluster import map_ray  # noqa: E402 (after the skip: it imports Ray)

ROOT = Path(__file__).resolve().parent.parent
ONE = EngineConfig("ray", workers=1)
TWO = EngineConfig("ray", workers=2, cpus_per_worker=0.5)  # 2 actors and a decoding task on 2 CPUs


@pytest.fixture(scope="session")
def ray_address() -> str:
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.ERROR, log_to_driver=False)
    yield ray.get_runtime_context().gcs_address
    ray.shutdown()


@pytest.fixture
def one_thread():
    """The thread count of a one-CPU Ray actor, for the local runs compared with it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


store_files = store_bytes  # a store's bytes, its corpus index (built by Ray tasks under Ray) included


def world_images(n: int):
    split = generate_split(WorldConfig(n_train=n), "train")
    return split.images, split.captions


def jsonl_corpus(folder: Path, n: int = 10) -> Path:
    images, captions = world_images(n)
    (folder / "img").mkdir(parents=True)
    lines = []
    for i, (im, caps) in enumerate(zip(images, captions)):
        Image.fromarray(im).save(folder / "img" / f"{i}.png")
        lines.append({"image": f"img/{i}.png", "captions": caps})
    path = folder / "corpus.jsonl"
    path.write_text("\n".join(json.dumps(x) for x in lines) + "\n")
    return path


def parquet_corpus(folder: Path, n: int = 10, bad: bool = False) -> str:
    """img2dataset's layout: PNG bytes in ``jpg``, one caption per row, row groups of 4. ``bad``: row
    3's PNG cut in half, row 7's image null (a failed download)."""
    images, captions = world_images(n)
    folder.mkdir(parents=True)
    cells = [png_bytes(im) for im in images]
    if bad:
        cells[3], cells[7] = cells[3][: len(cells[3]) // 2], None
    table = pa.table({"jpg": cells, "caption": [caps[0] for caps in captions]})
    pq.write_table(table, folder / "c.parquet", row_group_size=4)
    return str(folder / "c.parquet")


def tar_corpus(folder: Path, n: int = 10, bad: bool = False) -> str:
    """Two shards of ``n`` samples. ``bad``: sample 3's PNG cut in half, and sample 1 with no caption
    member."""
    images, captions = world_images(n)
    members = []
    for i, (im, caps) in enumerate(zip(images, captions)):
        data = png_bytes(im)
        members.append((f"{i:04d}.png", data[: len(data) // 2] if bad and i == 3 else data))
        if not (bad and i == 1):
            members.append((f"{i:04d}.json", json.dumps({"captions": caps}).encode()))
    write_tar(folder / "shard-0.tar", members[: len(members) // 2])
    write_tar(folder / "shard-1.tar", members[len(members) // 2 :])
    return str(folder / "shard-*.tar")


def corpus_fields(corpus) -> tuple:
    """What a corpus load decides: the rows kept, in order, with their captions and lines, what was
    skipped (the messages, in order) and the fingerprint that keys the store."""
    return (corpus.fingerprint, corpus.image_keys, corpus.captions, corpus.image_lines, corpus.skipped)


def no_decoding(*_args, **_kwargs):
    raise AssertionError("an image was decoded on the driver")


def no_index_shard(*_args, **_kwargs):
    raise AssertionError("a shard of the corpus index was built on the driver")


def test_ray_skip_bad_and_embed_equal_local_on_jsonl_webdataset_and_parquet(
    tmp_path, ray_address, clip, one_thread, monkeypatch
):
    """Corpora with two unreadable images each (JSONL: a corrupt PNG and a missing file; webdataset:
    a corrupt PNG and a sample without a caption; parquet: a corrupt PNG and a null image), loaded
    with skip_bad by the local engine and by Ray tasks, with PIL unable to open an image in this
    process (the driver) during the Ray load: the same kept rows, skipped messages and fingerprint.
    Then the same store, byte for byte (index.json, pair_image.npy, every shard, the corpus index
    beside them, whose shards Ray tasks build), from the local engine and from Ray with 2 actors
    (JSONL) and 1 actor (webdataset shards, img2dataset parquet)."""
    jsonl = jsonl_corpus(tmp_path / "j")
    truncate(tmp_path / "j" / "img" / "3.png")
    with jsonl.open("a") as fh:
        fh.write(json.dumps({"image": "img/gone.png", "caption": "a lost image"}) + "\n")
    for name, spec, engine in (
        ("jsonl", str(jsonl), TWO),
        ("tar", tar_corpus(tmp_path / "t", bad=True), ONE),
        ("parquet", parquet_corpus(tmp_path / "p", bad=True), ONE),
    ):
        corpus = load_corpus(spec, skip_bad=True)
        with monkeypatch.context() as m:
            m.setattr(Image, "open", no_decoding)
            ray_corpus = load_corpus(spec, skip_bad=True, engine=engine)
        assert corpus_fields(ray_corpus) == corpus_fields(corpus), name
        assert len(corpus.skipped) == 2 and corpus.n_images in (8, 9), name
        cfg = EmbedConfig(shard_size=4, batch_size=3, num_workers=0)
        local = embed_corpus(corpus, clip, EmbedConfig(**{**cfg.__dict__, "out": tmp_path / f"{name}-local"}))
        out = EmbedConfig(**{**cfg.__dict__, "out": tmp_path / f"{name}-ray"})
        with monkeypatch.context() as m:  # the corpus index's shards are built by Ray tasks, not here
            m.setattr(corpus_index, "_write_shard", no_index_shard)
            on_ray = embed_corpus(ray_corpus, clip, out, engine)
        shards = json.loads((on_ray.cache_path / "index.json").read_text())["shards"]
        assert not on_ray.from_cache and len(shards) >= 2, name
        assert store_files(on_ray.cache_path) == store_files(local.cache_path), name
        assert np.array_equal(np.asarray(on_ray.text_rows), np.asarray(local.text_rows))


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "tar"])
def test_ray_streamed_embed_equals_the_local_whole_load(fmt, tmp_path, ray_address, clip, one_thread, monkeypatch):
    """A JSONL manifest, a parquet file or two tar shards streamed in windows (a summary from
    ``scan_source``, never loaded whole) and embedded with 2 actors, the corpus index's shards built
    by Ray tasks from the windows: the store and index of the local engine's whole load, byte for byte."""
    import protosynth.corpora.window as window_module  # noqa: PLC0415
    import protosynth.corpus as corpus_module  # noqa: PLC0415
    from protosynth.corpora.source import CorpusSource  # noqa: PLC0415
    from protosynth.corpus import scan_source  # noqa: PLC0415

    if fmt == "jsonl":
        spec = str(jsonl_corpus(tmp_path / "j"))
    else:
        spec = parquet_corpus(tmp_path / "p") if fmt == "parquet" else tar_corpus(tmp_path / "t")
    cfg = dict(shard_size=3, batch_size=4, num_workers=0)
    local = embed_corpus(load_corpus(spec), clip, EmbedConfig(out=tmp_path / "local", **cfg))
    summary = scan_source(CorpusSource(spec))
    monkeypatch.setattr(window_module, "WINDOW_SHARDS", 2)
    loader = {"jsonl": "load_jsonl", "parquet": "load_parquet", "tar": "load_webdataset"}[fmt]
    monkeypatch.setattr(corpus_module, loader, lambda *a, **k: pytest.fail("the corpus was loaded whole"))
    monkeypatch.setattr(corpus_index, "_write_shard", no_index_shard)
    on_ray = embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "ray", **cfg), TWO)
    assert summary.loaded is None and len(json.loads((on_ray.cache_path / "index.json").read_text())["shards"]) >= 3
    assert store_files(on_ray.cache_path) == store_files(local.cache_path)


def _embed_cmd(out: Path, address: str) -> list[str]:
    return embed_cmd(out, "shapes,n=60", 4, "--engine", "ray", "--address", address)


def test_ray_embed_resumes_after_a_kill(tmp_path, ray_address, clip, one_thread):
    """SIGKILL a ``protosynth embed --engine ray`` driver once some shards exist; the rerun computes
    only the missing shards (the finished ones are not rewritten) and the store equals an
    uninterrupted local one byte for byte."""
    corpus = load_corpus("shapes,n=60")  # generated here, before the clock matters
    out = tmp_path / "resumed"
    env = dict(os.environ, PYTHONPATH=str(ROOT), OMP_NUM_THREADS="1")
    proc = subprocess.Popen(
        _embed_cmd(out, ray_address), env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True
    )
    kill_at_first_shard(proc, out, 600, 0.01)  # generous: a contended machine takes minutes to start Ray's actors
    assert proc.returncode == -signal.SIGKILL, proc.stderr.read().decode()
    assert list(out.glob("image-*.npy")), "no shard was written before the deadline: nothing to resume"
    index = json.loads((out / "index.json").read_text())
    assert index["complete"] is False and len(index["shards"]) == 15
    kept = {p.name: p.stat().st_mtime_ns for p in out.glob("*-0*.npy")}
    assert 1 <= len(kept) // 2 < 15
    resumed = embed_corpus(corpus, clip, EmbedConfig(out=out, shard_size=4, batch_size=4), ONE)
    assert not resumed.from_cache
    assert {name: (out / name).stat().st_mtime_ns for name in kept} == kept  # finished shards untouched
    clean = embed_corpus(corpus, clip, EmbedConfig(out=tmp_path / "clean", shard_size=4, batch_size=4, num_workers=0))
    assert store_files(out) == store_files(clean.cache_path)


def test_ray_corrupt_image_is_one_line_naming_file_and_row(tmp_path, ray_address, monkeypatch):
    """A truncated PNG read inside a Ray task: the reader's one line (file and row), exit code 2, and
    no store that looks complete. With ``--skip-bad`` and every image bad, the pass at load, in Ray
    tasks (PIL cannot open an image in this process), ends in its one line before any model loads."""
    spec = jsonl_corpus(tmp_path, n=6)
    truncate(tmp_path / "img" / "1.png")
    out = tmp_path / "store"
    args = ["--corpus", str(spec), "--engine", "ray", "--out", str(out), "--shard-size", "2", "--batch-size", "2"]
    r = CliRunner().invoke(app, ["embed", *args])
    assert_one_line_error(r, r"corpus\.jsonl line 2", r"img/1\.png", "cannot read image")
    assert json.loads((out / "index.json").read_text())["complete"] is False
    for i in (0, 2, 3, 4, 5):
        truncate(tmp_path / "img" / f"{i}.png")
    monkeypatch.setattr(Image, "open", no_decoding)
    r = CliRunner().invoke(app, ["embed", *args, "--skip-bad"])
    assert_one_line_error(r, "every one of its 6 images is unreadable", r"corpus\.jsonl line 1: cannot read image")


@pytest.mark.slow  # Ray's client tries the address until it gives up
def test_unreachable_address_is_one_line(tmp_path):
    """Nothing listens on the port: one line naming the flag and the address, exit 2, in seconds."""
    cmd = _embed_cmd(tmp_path / "s", "127.0.0.1:9")
    started = time.time()
    r = subprocess.run(cmd, env=dict(os.environ, PYTHONPATH=str(ROOT)), capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        "error: --address 127.0.0.1:9: no Ray cluster answers there (Connection refused)"
    ]
    assert time.time() - started < 60


@contextmanager
def _answering(reply: bytes):
    """A local port whose server reads a little and answers ``reply`` (b"": hangs up); yields its address."""
    server = socket.create_server(("127.0.0.1", 0))
    server.settimeout(1.0)  # accept() wakes up to see the socket closed: the thread ends with the test

    def answer():
        with server:
            while True:
                try:
                    conn, _ = server.accept()
                except TimeoutError:
                    continue
                except OSError:
                    return
                with conn:
                    conn.recv(64)
                    conn.sendall(reply)

    threading.Thread(target=answer, daemon=True).start()
    try:
        yield f"127.0.0.1:{server.getsockname()[1]}"
    finally:
        server.close()


@pytest.mark.slow  # Ray's client tries the address until it gives up
def test_an_address_where_another_service_answers_is_one_line(tmp_path):
    """A port where something other than Ray answers (an HTTP/1.1 server such as the dashboard; one
    that hangs up) would leave ray.init retrying for minutes: one line, exit 2, in seconds."""
    with _answering(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n") as address:
        started = time.time()
        env = dict(os.environ, PYTHONPATH=str(ROOT))
        r = subprocess.run(_embed_cmd(tmp_path / "s", address), env=env, capture_output=True, text=True, timeout=120)
    assert r.returncode == 2, r.stderr
    assert r.stderr.strip().splitlines() == [
        f"error: --address {address}: something answers there, but not a Ray cluster (no gRPC); the head's "
        "address is the one `ray start` prints there (port 6379 by default; not the dashboard's 8265)"
    ]
    assert time.time() - started < 60 and not (tmp_path / "s").exists()
    with _answering(b"") as address, pytest.raises(ProtosynthError, match="something answers there, but not a Ray"):
        check_engine(EngineConfig("ray", address=address))


def test_under_ray_use_tls_the_address_check_is_tcp_only(monkeypatch):
    """A TLS cluster would not answer a plaintext HTTP/2 preface: a port that accepts and stays silent
    passes under RAY_USE_TLS=1 and is refused (after the read times out) without it."""
    monkeypatch.setattr(engine_module, "CONNECT_TIMEOUT", 0.5)
    with socket.create_server(("127.0.0.1", 0)) as silent:
        address = f"127.0.0.1:{silent.getsockname()[1]}"
        monkeypatch.setenv("RAY_USE_TLS", "1")
        check_engine(EngineConfig("ray", address=address))
        monkeypatch.setenv("RAY_USE_TLS", "false")
        with pytest.raises(ProtosynthError, match="something answers there, but not a Ray cluster"):
            check_engine(EngineConfig("ray", address=address))


def test_missing_ray_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    """Without Ray installed (``import ray`` fails, as in the default install) ``--engine ray`` is one
    line naming the extra, before any work: no store folder is made."""
    monkeypatch.setitem(sys.modules, "ray", None)
    r = CliRunner().invoke(app, ["embed", "--engine", "ray", "--out", str(tmp_path / "s")])
    assert_one_line_error(r, r"--engine ray needs Ray: pip install -e '\.\[ray\]'")
    assert not (tmp_path / "s").exists()


def test_engine_flags_are_checked_before_any_work():
    runner = CliRunner()
    r = runner.invoke(app, ["embed", "--engine", "spark"])
    assert_one_line_error(r, "--engine 'spark'", "local or ray")
    r = runner.invoke(app, ["embed", "--address", "auto"])
    assert_one_line_error(r, "--address needs --engine ray")
    r = runner.invoke(app, ["embed", "--engine", "ray", "--workers", "0"])
    assert_one_line_error(r, "--workers must be at least 1")
    with pytest.raises(ProtosynthError, match="cpus_per_worker must be positive"):
        check_engine(EngineConfig("ray", cpus_per_worker=0))


def _distill(out: Path, engine: EngineConfig | None = None) -> Path:
    """A small set with the shipped models and their defaults (start from the nearest member, CLIP
    guidance), 3 render batches of 2: two actors draw different batches."""
    cfg = DistillConfig(
        method="pds", budget=6, corpus="shapes,n=40", out=out, render=RenderConfig(steps=2, batch_size=2)
    )
    return distill(cfg if engine is None else replace(cfg, engine=engine))


def set_files(folder: Path) -> dict[str, bytes]:
    """The images, pairs.jsonl (captions, members) and the prototype tensors of a set."""
    files = {p.name: p.read_bytes() for p in sorted((folder / "images").iterdir())}
    return files | {name: (folder / name).read_bytes() for name in ("pairs.jsonl", "embeddings.safetensors")}


def test_ray_distill_equals_local_with_one_and_two_workers(tmp_path, ray_address, one_thread):
    """The same corpus and seed through the local engine and Ray with 1 and 2 actors: identical
    pairs.jsonl, images and prototype tensors, byte for byte."""
    local = set_files(_distill(tmp_path / "local"))
    assert len(local) == 8
    for name, engine in (("one", ONE), ("two", TWO)):
        assert set_files(_distill(tmp_path / name, engine)) == local, name


@pytest.mark.parametrize("mode", ["matched", "joint"])
def test_ray_cluster_passes_equal_local(tmp_path, ray_address, clip, mode):
    """Clustering a store's shards with Ray tasks gives the local engine's prototypes and members,
    byte for byte, also when k-means fits on a sample and every pair is assigned afterwards."""
    emb = embed_corpus(load_corpus("shapes,n=60"), clip, EmbedConfig(out=tmp_path / "s", shard_size=8, num_workers=0))
    cfg = PrototypeConfig(budget=12, mode=mode, max_train_points=150, seed=3)
    local = build_prototypes(emb.image_rows, emb.text_rows, cfg)
    on_ray = build_prototypes(emb.image_rows, emb.text_rows, cfg, partial(map_ray, engine=ONE))
    assert local.stats["kmeans_trained_on"] == 150 < local.stats["kmeans_points"]
    for name in ("image", "text", "image_raw", "text_raw"):
        assert getattr(on_ray, name).tobytes() == getattr(local, name).tobytes(), name
    assert [m.tolist() for m in on_ray.members] == [m.tolist() for m in local.members]
    assert on_ray.stats == local.stats


@pytest.mark.parametrize("fmt", ["jsonl", "parquet", "webdataset"])
def test_ray_streamed_skip_bad_scan_and_embed_equal_the_local_whole_load(
    fmt, tmp_path, ray_address, clip, one_thread, monkeypatch, request
):
    """A JSONL manifest with a corrupt PNG and a missing file (or ``parquet_bad``, ``tar_bad``: two
    bad images and a null-image row or a sample without an image) read with --skip-bad on Ray: the
    check's windows decode in Ray tasks (PIL cannot open an image here, the driver), the corpus is
    never loaded whole, and the summary (kept pairs, fingerprint, messages) and the store Ray writes
    from its windows are the local engine's whole load's, byte for byte."""
    import protosynth.corpora.base as corpora_base  # noqa: PLC0415
    import protosynth.corpus as corpus_module  # noqa: PLC0415
    from protosynth.corpora.source import CorpusSource  # noqa: PLC0415
    from protosynth.corpus import scan_source  # noqa: PLC0415

    if fmt == "jsonl":
        spec, loader, kept = str(jsonl_corpus(tmp_path / "j")), "load_jsonl", 9
        truncate(tmp_path / "j" / "img" / "3.png")
        with open(spec, "a") as fh:
            fh.write(json.dumps({"image": "img/gone.png", "caption": "a lost image"}) + "\n")
    else:
        spec = request.getfixturevalue("parquet_bad" if fmt == "parquet" else "tar_bad")
        loader, kept = ("load_parquet" if fmt == "parquet" else "load_webdataset"), 14
    corpus = load_corpus(spec, skip_bad=True)
    cfg = dict(shard_size=3, batch_size=4, num_workers=0)
    local = embed_corpus(corpus, clip, EmbedConfig(out=tmp_path / "local", **cfg))
    monkeypatch.setattr(corpora_base, "CHECK_WINDOW", 4)
    monkeypatch.setattr(corpus_module, loader, lambda *a, **k: pytest.fail("the corpus was loaded whole"))
    with monkeypatch.context() as m:
        m.setattr(Image, "open", no_decoding)
        summary = scan_source(CorpusSource(spec, skip_bad=True), engine=TWO)
    assert (summary.fingerprint, summary.skipped, summary.n_images) == (corpus.fingerprint, corpus.skipped, kept)
    assert summary.pair_image.tolist() == corpus.pair_image.tolist()
    monkeypatch.setattr(corpus_index, "_write_shard", no_index_shard)
    on_ray = embed_corpus(summary, clip, EmbedConfig(out=tmp_path / "ray", **cfg), TWO)
    assert summary.loaded is None
    assert store_files(on_ray.cache_path) == store_files(local.cache_path)

"""Sharing a set: every set folder is a Hugging Face ``imagefolder`` dataset (read back with the real
``datasets``), ``export`` to webdataset and parquet (read back with tarfile and pyarrow), and the
static HTML ``report`` (opened in a real headless Chromium when one is installed)."""

from __future__ import annotations

import html
import json
import re
import shutil
import subprocess
import tarfile
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import DatasetCard
from PIL import Image
from typer.testing import CliRunner

from protosynth.baselines.compare import markdown, plot
from protosynth.cli.main import app
from protosynth.coreset import CoresetConfig, build_coreset
from protosynth.corpus import load_corpus
from protosynth.distill import DistillConfig, distill
from protosynth.errors import ProtosynthError
from protosynth.evaluation.metrics import METRICS
from protosynth.render import RenderConfig
from protosynth.sets.comparison import set_folder
from protosynth.sets.distilled import load_distilled, not_a_set
from protosynth.sets.export import ExportConfig, export_set, is_our_tar
from protosynth.sets.report import ReportConfig, build_report

datasets = pytest.importorskip("datasets", reason="the Hugging Face datasets package is not installed")
pq = pytest.importorskip("pyarrow.parquet", reason="pyarrow is not installed (datasets brings it)")

CORPUS = "shapes,n=60"
BUDGET = 8


@pytest.fixture(scope="module")
def pds_set(tmp_path_factory) -> Path:
    """A PDS set from the shipped models (no training: seconds), with its render fidelity."""
    out = tmp_path_factory.mktemp("sets") / "pds"
    return distill(DistillConfig(method="pds", budget=BUDGET, corpus=CORPUS, out=out, render=RenderConfig(steps=2)))


def pairs_of(folder: Path) -> list[dict]:
    return [json.loads(line) for line in (folder / "pairs.jsonl").read_text().splitlines()]


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image.convert("RGB"))


@pytest.mark.parametrize("how", ["imagefolder", "card"])
def test_a_set_is_an_imagefolder_dataset(pds_set, tmp_path, how):
    """``imagefolder`` on the folder, and the folder itself (read through its card's ``configs``, as
    the Hub reads it): one row per pair, nothing else (not preview.png, not pairs.jsonl)."""
    args = ("imagefolder",) if how == "imagefolder" else (str(pds_set),)
    kwargs = {"data_dir": str(pds_set)} if how == "imagefolder" else {}
    ds = datasets.load_dataset(*args, **kwargs, split="train", cache_dir=str(tmp_path / "hf"))
    pairs = pairs_of(pds_set)
    assert ds.num_rows == len(pairs) == BUDGET
    assert ds.column_names[:4] == ["image", "caption", "members", "index"]
    ds = ds.select(np.argsort(ds["index"]))  # imagefolder promises no row order
    assert ds["index"] == [p["index"] for p in pairs]
    assert ds["caption"] == [p["caption"] for p in pairs]
    assert ds["members"] == [p["members"] for p in pairs]
    assert ds["start_pair"] == [p["start_pair"] for p in pairs]  # the other plain fields come along
    for row, pair in zip(ds, pairs):
        with Image.open(pds_set / pair["image"]) as png:
            assert np.array_equal(pixels(row["image"]), pixels(png))


def test_a_500_pair_set_round_trips_through_load_dataset(tmp_path):
    """The issue's size: 500 pairs (a random coreset of a 200-image world: real pairs, seconds to make),
    500 rows, captions equal to pairs.jsonl's in order."""
    out = build_coreset(CoresetConfig(method="random", budget=500, corpus="shapes,n=200", out=tmp_path / "b500"))
    ds = datasets.load_dataset("imagefolder", data_dir=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    ds = ds.select(np.argsort(ds["index"]))
    pairs = pairs_of(out)
    assert ds.num_rows == len(pairs) == 500
    assert ds["caption"] == [p["caption"] for p in pairs] and ds["members"] == [p["members"] for p in pairs]


def test_the_card_and_metadata_are_files_of_the_set(pds_set):
    """Hashed in the manifest like every file (so --force and verify know them), a Hub-valid YAML head."""
    manifest = json.loads((pds_set / "manifest.json").read_text())
    assert {"metadata.jsonl", "README.md"} <= set(manifest["files"])
    assert not_a_set(pds_set) is None
    load_distilled(pds_set, verify=True)
    card = (pds_set / "README.md").read_text()
    lines = card.splitlines()
    assert lines[0] == "---" and lines.count("---") == 2, "the YAML header is not closed by a line of its own"
    head = DatasetCard(card).data.to_dict()  # the Hub client's own parser
    assert head == yaml.safe_load("\n".join(lines[1 : lines.index("---", 1)]))
    assert head["size_categories"] == ["n<1K"] and "text-to-image" in head["task_categories"]
    assert head["configs"][0]["data_files"][0]["path"] == ["images/*.png", "metadata.jsonl"]
    body = "\n".join(lines[lines.index("---", 1) + 1 :])
    fid = manifest["render_fidelity"]
    assert f"top-1 {fid['top1']} %" in body and CORPUS in body and '"steps": 2' in body


def test_the_card_names_the_command_that_made_the_set(tmp_path, monkeypatch):
    """A set made on the command line records that line (manifest and card); from Python, none."""
    out = tmp_path / "cli"
    argv = ["coreset", "--method", "random", "--budget", "4", "--corpus", CORPUS, "--out", str(out)]
    monkeypatch.setattr("sys.argv", ["protosynth", *argv])  # what a shell hands the entry point
    result = CliRunner().invoke(app, argv)
    assert result.exit_code == 0, result.output
    line = "protosynth " + " ".join(argv)
    assert json.loads((out / "manifest.json").read_text())["command"] == line
    assert f"- **command**: `{line}`" in (out / "README.md").read_text()
    api = build_coreset(CoresetConfig(method="random", budget=4, corpus=CORPUS, out=tmp_path / "api"))
    assert json.loads((api / "manifest.json").read_text())["command"] is None
    assert "**command**" not in (api / "README.md").read_text()


def test_force_replaces_a_set_with_its_card_and_metadata(pds_set, tmp_path):
    old = tmp_path / "old"
    shutil.copytree(pds_set, old)
    distill(DistillConfig(budget=4, corpus=CORPUS, out=old, force=True, method="select"))
    assert len(pairs_of(old)) == 4 and len((old / "metadata.jsonl").read_text().splitlines()) == 4
    (old / "notes.txt").write_text("mine")  # a file the set does not list: never replaced
    with pytest.raises(ProtosynthError, match="notes.txt is not one of its files"):
        distill(DistillConfig(budget=4, corpus=CORPUS, out=old, force=True, method="select"))


def test_export_webdataset_reads_back(pds_set, tmp_path):
    """One tar: KEY.png (the set's own PNG bytes), KEY.txt (caption), KEY.json (the pair record), in
    pair order; protosynth's own webdataset corpus reader reads it as a corpus."""
    out = export_set(pds_set, ExportConfig(to="webdataset", out=tmp_path / "set.tar"))
    pairs = pairs_of(pds_set)
    with tarfile.open(out) as tf:
        names = tf.getnames()
        assert names == [f"{p['index']:06d}.{ext}" for p in pairs for ext in ("png", "txt", "json")]
        for p in pairs:
            key = f"{p['index']:06d}"
            assert tf.extractfile(f"{key}.png").read() == (pds_set / p["image"]).read_bytes()
            assert tf.extractfile(f"{key}.txt").read().decode() == p["caption"]
            assert json.loads(tf.extractfile(f"{key}.json").read()) == p
    corpus = load_corpus(str(out))
    assert corpus.pair_caption == [p["caption"] for p in pairs]
    for i, p in enumerate(pairs):
        with Image.open(pds_set / p["image"]) as png:
            assert np.array_equal(pixels(corpus.load_image(i)), pixels(png))


def test_export_parquet_reads_back(pds_set, tmp_path):
    """One file: PNG bytes, caption, members, index per pair (pyarrow); datasets decodes its images."""
    out = export_set(pds_set, ExportConfig(to="parquet", out=tmp_path / "set.parquet"))
    pairs = pairs_of(pds_set)
    table = pq.read_table(out)
    assert table.num_rows == len(pairs)
    rows = table.to_pylist()
    assert [r["caption"] for r in rows] == [p["caption"] for p in pairs]
    assert [r["members"] for r in rows] == [p["members"] for p in pairs]
    assert [r["index"] for r in rows] == [p["index"] for p in pairs]
    assert [r["image"]["bytes"] for r in rows] == [(pds_set / p["image"]).read_bytes() for p in pairs]
    ds = datasets.load_dataset("parquet", data_files=str(out), split="train", cache_dir=str(tmp_path / "hf"))
    with Image.open(pds_set / pairs[0]["image"]) as png:
        assert np.array_equal(pixels(ds[0]["image"]), pixels(png))


@pytest.mark.parametrize("to", ["webdataset", "parquet"])
def test_export_replaces_only_its_own_files(pds_set, tmp_path, to):
    out = tmp_path / "out.bin"
    out.write_text("a user's file")
    # without force as with it: the message never suggests a force that would then refuse
    for force in (False, True):
        with pytest.raises(ProtosynthError, match=f"out {out} is not a protosynth {to} export; name another file"):
            export_set(pds_set, ExportConfig(to=to, out=out, force=force))
    assert out.read_text() == "a user's file"
    out.unlink()
    first = export_set(pds_set, ExportConfig(to=to, out=out)).read_bytes()
    export_set(pds_set, ExportConfig(to=to, out=out, force=True))
    assert out.read_bytes() == first  # the same set exports to the same bytes
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out.bin"], "a temporary file was left behind"


def test_export_refuses_bad_requests(pds_set, tmp_path):
    with pytest.raises(ProtosynthError, match="to 'zip': use one of webdataset, parquet"):
        export_set(pds_set, ExportConfig(to="zip", out=tmp_path / "x"))
    with pytest.raises(ProtosynthError, match="is inside the set"):
        export_set(pds_set, ExportConfig(to="parquet", out=pds_set / "x.parquet"))
    with pytest.raises(ProtosynthError, match="not a complete distilled set"):
        export_set(tmp_path, ExportConfig(to="parquet", out=tmp_path / "x.parquet"))


def test_export_verb(pds_set, tmp_path):
    """The command line parses and calls the library; its errors name its flags."""
    out = tmp_path / "s.tar"
    done = CliRunner().invoke(app, ["export", str(pds_set), "--to", "webdataset", "--out", str(out)])
    assert done.exit_code == 0 and f"wrote {out}" in done.output and is_our_tar(out)
    again = CliRunner().invoke(app, ["export", str(pds_set), "--to", "webdataset", "--out", str(out)])
    assert again.exit_code == 2 and again.stderr == f"error: --out {out} exists; pass --force to replace it\n"


@pytest.fixture(scope="module")
def compare_folder(pds_set, tmp_path_factory) -> Path:
    """A compare-baselines folder as compare.py writes it (its own markdown and plot writers) for
    two methods with sets (PDS, a random coreset) and one whose set is missing."""
    folder = tmp_path_factory.mktemp("compare")
    shutil.copytree(pds_set, set_folder(folder, "pds", BUDGET))
    build_coreset(
        CoresetConfig(method="random", budget=BUDGET, corpus=CORPUS, out=set_folder(folder, "random", BUDGET))
    )
    metrics = {k: {"mean": 10.0 + j, "std": 0.5} for j, k in enumerate(METRICS)}
    rows = [
        {"method": m, "metrics": metrics, "distill_seconds": 2.0, "total_seconds": 3.0, "peak_memory_mb": 900}
        for m in ("pds", "random", "lors")
    ]
    doc = {"budget": BUDGET, "corpus": CORPUS, "quick": True, "protocol": "small", "repeats": 1, "score": "final"}
    doc |= {"methods": rows, "buffers": {}, "command": "protosynth compare-baselines --quick", "commit": "abc"}
    (folder / "compare.json").write_text(json.dumps(doc))
    (folder / "compare.md").write_text(markdown(doc))
    plot(doc, folder / "compare.png")
    return folder


def expected_images(folder: Path, members: int = 3) -> int:
    """A set's images on the page: each pair's, and up to ``members`` of its members' distinct images."""
    corpus = load_corpus(CORPUS)
    return sum(1 + min(members, len({int(corpus.pair_image[m]) for m in p["members"]})) for p in pairs_of(folder))


def test_report_shows_sets_and_comparisons(pds_set, compare_folder, tmp_path):
    out = build_report([pds_set, compare_folder], ReportConfig(out=tmp_path / "r.html"))
    page = out.read_text()
    assert page.count("<img ") == expected_images(pds_set) + 1 + 2 * 4  # plot, 4 samples of 2 sets
    assert page.count("render fidelity: top-1") == 2  # the PDS set, and PDS's samples in the comparison
    assert page.count("no render fidelity") == 1  # the coreset's samples
    assert f"no set at {set_folder(compare_folder, 'lors', BUDGET)}" in page
    for p in pairs_of(pds_set):
        assert html.escape(p["caption"]) in page
    assert "<script" not in page  # a static page


def test_report_says_when_members_cannot_be_shown(pds_set, tmp_path):
    moved = tmp_path / "set"
    shutil.copytree(pds_set, moved)
    manifest = json.loads((moved / "manifest.json").read_text())
    manifest["corpus"]["fingerprint"] = "world-0000-train"  # the corpus changed since: members mean nothing
    (moved / "manifest.json").write_text(json.dumps(manifest))
    page = build_report([moved], ReportConfig(out=tmp_path / "r.html")).read_text()
    assert "member thumbnails not shown: the source corpus could not be loaded" in page and "changed since" in page
    assert page.count("<img ") == BUDGET


def test_report_replaces_only_its_own_page(pds_set, tmp_path):
    out = tmp_path / "r.html"
    out.write_text("<html>my notes</html>")
    for force in (False, True):
        with pytest.raises(ProtosynthError, match="is not a protosynth report; name another file"):
            build_report([pds_set], ReportConfig(out=out, members=0, force=force))
    assert out.read_text() == "<html>my notes</html>"
    out.unlink()
    build_report([pds_set], ReportConfig(out=out, members=0))
    build_report([pds_set], ReportConfig(out=out, members=0, force=True))
    with pytest.raises(ProtosynthError, match="neither a distilled set nor a compare-baselines folder"):
        build_report([tmp_path], ReportConfig(out=tmp_path / "other.html"))


CHROMIUM = next((shutil.which(n) for n in ("chromium", "chromium-browser", "google-chrome") if shutil.which(n)), None)
# Appended to a copy of the page (the report itself has no script): counts the images and the ones
# that decoded, and any error event (a failed image load included), into attributes of <body>.
PROBE = """<script>
document.body.dataset.errors = 0;
window.addEventListener("error", () => { document.body.dataset.errors++; }, true);
window.addEventListener("load", () => {
  const images = [...document.images];
  document.body.dataset.images = images.length;
  document.body.dataset.decoded = images.filter((i) => i.complete && i.naturalWidth > 0).length;
});
</script>"""


def chromium(tmp_path: Path, *args: str) -> subprocess.CompletedProcess:
    flags = ["--headless", "--no-sandbox", "--disable-gpu", f"--user-data-dir={tmp_path / 'chromium'}"]
    return subprocess.run([CHROMIUM, *flags, *args], capture_output=True, text=True, timeout=60)


@pytest.mark.skipif(CHROMIUM is None, reason="no chromium installed (Debian: apt-get install chromium)")
def test_report_in_a_headless_browser(pds_set, compare_folder, tmp_path):
    """The page loads in Chromium with every image decoded and no console message; a screenshot is
    kept beside the test (report.png) to look at."""
    out = build_report([pds_set, compare_folder], ReportConfig(out=tmp_path / "report.html"))
    probed = tmp_path / "probed.html"
    probed.write_text(out.read_text().replace("</body>", PROBE + "</body>"))
    done = chromium(
        tmp_path, "--enable-logging=stderr", "--v=0", "--virtual-time-budget=5000", "--dump-dom", probed.as_uri()
    )
    body = re.search(r"<body[^>]*>", done.stdout)
    assert done.returncode == 0 and body, done.stderr[-2000:]
    attrs = dict(re.findall(r'data-(\w+)="(\d+)"', body.group(0)))
    n = expected_images(pds_set) + 1 + 2 * 4
    assert attrs == {"errors": "0", "images": str(n), "decoded": str(n)}
    assert [line for line in done.stderr.splitlines() if ":CONSOLE" in line] == []
    shot = tmp_path / "report.png"
    chromium(tmp_path, f"--screenshot={shot}", "--window-size=1280,1600", out.as_uri())
    with Image.open(shot) as im:
        assert im.size == (1280, 1600) and len(np.unique(np.asarray(im.convert("L")))) > 10

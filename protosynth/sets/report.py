"""``report``: one static, self-contained HTML page to look at sets and comparisons in a browser.

Every image is embedded as a PNG data URI (no server, no side files: the page can be mailed or
attached to an issue), and the page has no script. For a set: every synthetic image with its caption,
the set's render fidelity when its manifest has one, the text reading it declares, and up to
``members`` thumbnails of the real pairs it summarises when the source corpus can still be loaded
(member indices only mean something in that corpus; when it cannot be loaded, the page says why).
For a ``compare-baselines`` folder: its table, its plot and a few samples of each method's set side
by side.
"""

from __future__ import annotations

import base64
import html
import io
import json
import re
from pathlib import Path

from PIL import Image

from ..configs import ReportConfig  # noqa: F401 (re-exported: its public home)
from ..errors import P, ProtosynthError
from ..evaluation.data import source_corpus
from ..evaluation.metrics import METRICS
from ..util.files import check_folder
from .comparison import set_folder
from .distilled import DistilledSet, decode_image, load_distilled
from .export import check_out_file, write_out_file

GENERATOR = '<meta name="generator" content="protosynth report">'  # what says an existing page is ours
STYLE = """
body { font: 14px/1.4 system-ui, sans-serif; margin: 1.5em; color: #222; }
h1 { font-size: 1.4em; } h2 { font-size: 1.2em; margin-top: 2em; border-bottom: 1px solid #ccc; }
.grid { display: flex; flex-wrap: wrap; gap: 10px; }
figure { margin: 0; width: 140px; padding: 4px; border: 1px solid #ddd; border-radius: 4px; }
figure img.syn { width: 128px; height: 128px; object-fit: contain; image-rendering: pixelated; }
figcaption { font-size: 12px; }
.members { font-size: 11px; color: #555; }
.members img { width: 40px; height: 40px; image-rendering: pixelated; margin-right: 2px; }
.note { color: #a33; } .meta { color: #555; }
table { border-collapse: collapse; font-size: 13px; } td, th { border: 1px solid #ccc; padding: 2px 6px; }
.row { display: flex; gap: 10px; align-items: flex-start; margin: 6px 0; }
.row > b { width: 140px; font-weight: normal; } .row .meta { font-size: 11px; }
img.plot { max-width: 100%; }
"""


def data_uri(image: Image.Image, side: int) -> str:
    """The image as a PNG data URI, shrunk to at most ``side`` pixels a side."""
    image = image.convert("RGB")
    if max(image.size) > side:
        image.thumbnail((side, side))
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buf.getvalue()).decode("ascii")


def img(image: Image.Image, side: int, cls: str, alt: str) -> str:
    return f'<img class="{cls}" src="{data_uri(image, side)}" alt="{html.escape(alt)}">'


def without_folders(text: str) -> str:
    """``text`` with each file path cut to its last name: a page that is shared must not show where
    the corpus, the models or the set sit on the machine that made it (``/data/me/flickr.json`` ->
    ``flickr.json``, ``small:/home/me/runs/mine`` -> ``small:mine``)."""
    return _FOLDERS.sub("", text)


# a run of folder names ending in a separator, from the start of a path (absolute, ~, ./ or ../)
_FOLDERS = re.compile(r"(?:(?<=^)|(?<=[\s:'\"(=]))(?:~|\.{1,2})?/(?:[^\s/'\"]*/)*")


def member_source(ds: DistilledSet):
    """``(corpus, None)``, or ``(None, why)`` when the set's source corpus cannot be loaded now."""
    if not any(p.get("members") for p in ds.pairs):
        return None, "this set records no member pairs"
    try:
        return source_corpus(ds), None
    except (ProtosynthError, OSError, KeyError, ValueError) as exc:
        return None, f"member thumbnails not shown: the source corpus could not be loaded ({without_folders(str(exc))})"


def fidelity(manifest: dict) -> str:
    """The set's render fidelity as the manifest records it, or why there is none."""
    fid = manifest.get("render_fidelity")
    if not fid:
        return "no render fidelity (nothing was rendered)"
    return (
        f"render fidelity: top-1 {fid.get('top1')} %, top-5 {fid.get('top5')} %, "
        f"mean cosine {fid.get('mean_cosine')} (n={fid.get('n')})"
    )


def stores_text(ds: DistilledSet) -> bool:
    """Whether the set stores the captions of the reading it declares (sets made before they were
    stored read them from the corpus)."""
    try:
        return ds.scored_captions() is not None
    except ProtosynthError:  # a reading no caption list serves
        return False


def set_summary(ds: DistilledSet) -> str:
    """One line: what made the set, from what, and its render fidelity when measured."""
    m = ds.manifest
    corpus = m.get("corpus") or {}
    parts = [f"method <b>{html.escape(str(m.get('method')))}</b>", f"{len(ds)} pairs", f"seed {m.get('seed')}"]
    parts.append(f"corpus <code>{html.escape(without_folders(str(corpus.get('spec'))))}</code>")
    for key in ("clip", "decoder"):
        if m.get(key):
            parts.append(f"{key} <code>{html.escape(without_folders(str(m[key].get('spec'))))}</code>")
    parts.append(fidelity(m))
    parts.append(
        f"text reading <b>{html.escape(ds.text_reading)}</b>" + ("" if stores_text(ds) else " (from the corpus)")
    )
    return '<p class="meta">' + " · ".join(parts) + "</p>"


def member_images(members: list[int], corpus, limit: int) -> list[tuple[int, int]]:
    """``(pair, image)`` for the first ``limit`` members showing distinct images: an image's five
    captions are five member pairs, and three thumbnails of one image would show one."""
    seen: dict[int, int] = {}
    for m in members:
        if 0 <= int(m) < corpus.n_pairs and len(seen) < limit:
            seen.setdefault(int(corpus.pair_image[int(m)]), int(m))
    return [(m, image) for image, m in seen.items()]


def pair_figure(ds: DistilledSet, i: int, corpus, cfg: ReportConfig) -> str:
    rec = ds.pairs[i]
    members = ""
    if corpus is not None and rec.get("members"):
        thumbs = [
            img(corpus.load_image(image), cfg.thumb, "member", f"member pair {m}")
            for m, image in member_images(rec["members"], corpus, cfg.members)
        ]
        members = f'<div class="members"><div>members</div>{"".join(thumbs)}</div>'
    index = rec.get("index", i)
    image = img(ds.image(i), cfg.thumb, "syn", f"pair {index}")
    return f"<figure>{image}<figcaption>{index}: {html.escape(rec['caption'])}</figcaption>{members}</figure>"


def set_section(folder: Path, cfg: ReportConfig) -> str:
    ds = load_distilled(folder, verify=True)  # the page shows the set as it was written, or nothing
    corpus, why = member_source(ds) if cfg.members > 0 else (None, None)
    note = f'<p class="note">{html.escape(why)}</p>' if why else ""
    figures = "".join(pair_figure(ds, i, corpus, cfg) for i in range(len(ds)))
    title = html.escape(without_folders(str(folder)))
    return f'<h2>{title}</h2>{set_summary(ds)}{note}<div class="grid">{figures}</div>'


def compare_table(doc: dict) -> str:
    head = "".join(f"<th>{k}</th>" for k in ("method", *METRICS, "gain over random", "total s"))
    rows = []
    for row in doc.get("methods", []):
        cells = [row["method"]]
        cells += [f"{row['metrics'][k]['mean']:.1f} ± {row['metrics'][k]['std']:.1f}" for k in METRICS]
        cells += [row.get("gain_over_random", "-"), row.get("total_seconds", "-")]
        rows.append("<tr>" + "".join(f"<td>{html.escape(str(c))}</td>" for c in cells) + "</tr>")
    return f"<table><tr>{head}</tr>{''.join(rows)}</table>"


def method_samples(folder: Path, method: str, budget: int, cfg: ReportConfig) -> str:
    path = set_folder(folder, method, budget)
    try:
        ds = load_distilled(path)
    except ProtosynthError:
        return f'<div class="row"><b>{html.escape(method)}</b><span class="note">no set at {path}</span></div>'
    figures = "".join(
        f"<figure>{img(ds.image(i), cfg.thumb, 'syn', f'{method} pair {i}')}"
        f"<figcaption>{html.escape(ds.pairs[i]['caption'])}</figcaption></figure>"
        for i in range(min(cfg.samples, len(ds)))
    )
    label = f'<b>{html.escape(method)}<br><span class="meta">{fidelity(ds.manifest)}</span></b>'
    return f'<div class="row">{label}{figures}</div>'


def _is_result(row) -> bool:
    """A row of compare.json's ``methods``, as compare_table reads it."""
    metrics = row.get("metrics") if isinstance(row, dict) else None
    return (
        isinstance(row.get("method") if isinstance(row, dict) else None, str)
        and isinstance(metrics, dict)
        and all(
            isinstance(metrics.get(k), dict)
            and all(isinstance(metrics[k].get(s), (int, float)) for s in ("mean", "std"))
            for k in METRICS
        )
    )


def read_compare(folder: Path) -> dict:
    """A compare-baselines folder's compare.json, checked for what the page reads from it."""
    path = folder / "compare.json"
    try:
        doc = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ProtosynthError(f"{path}: not readable JSON ({exc})") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("methods", []), list):
        raise ProtosynthError(f"{path}: not a compare-baselines result (no 'methods' list)")
    for i, row in enumerate(doc.get("methods", [])):
        if not _is_result(row):
            raise ProtosynthError(
                f"{path}: methods[{i}] is not a method's result (a 'method' name and 'metrics' with the mean and "
                f"std of {', '.join(METRICS)})"
            )
    return doc


def compare_section(folder: Path, cfg: ReportConfig) -> str:
    """A compare-baselines folder: its table (compare.json), its plot and samples per method."""
    doc = read_compare(folder)
    title = f"{folder}: budget {doc.get('budget')}, corpus {doc.get('corpus')}, protocol {doc.get('protocol')}"
    parts = [f"<h2>{html.escape(title)}</h2>", compare_table(doc)]
    if (folder / "compare.png").is_file():
        plot = decode_image(folder / "compare.png")
        parts.append(img(plot, max(plot.size), "plot", "compare.png"))
    methods = [r["method"] for r in doc.get("methods", []) if r["method"] != "full"]
    parts += [method_samples(folder, m, doc.get("budget"), cfg) for m in methods]
    return "".join(parts)


def section(folder: Path, cfg: ReportConfig) -> str:
    check_folder(folder)
    if (folder / "compare.json").is_file():
        return compare_section(folder, cfg)
    if not (folder / "manifest.json").is_file():
        raise ProtosynthError(f"{folder} is neither a distilled set nor a compare-baselines folder")
    return set_section(folder, cfg)


def is_our_page(path: Path) -> bool:
    with open(path, "rb") as fh:
        return GENERATOR.encode() in fh.read(4096)


def build_report(folders: list[str | Path], cfg: ReportConfig) -> Path:
    """Write one HTML page for ``folders`` (sets and compare-baselines folders) to ``cfg.out``."""
    if not folders:
        raise ProtosynthError(f"{P.folders} needs at least one set or compare-baselines folder")
    for name in ("members", "samples"):
        if getattr(cfg, name) < 0:
            raise ProtosynthError(f"{getattr(P, name)} must be 0 or more, got {getattr(cfg, name)}")
    out = Path(cfg.out)
    check_out_file(out, cfg.force, is_our_page, "report")
    body = "".join(section(Path(f), cfg) for f in folders)
    page = (
        f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">{GENERATOR}'
        f"<title>protosynth report</title><style>{STYLE}</style></head>"
        f"<body><h1>protosynth report</h1>{body}</body></html>\n"
    )
    return write_out_file(out, cfg.force, is_our_page, lambda tmp: tmp.write_text(page, encoding="utf-8"))

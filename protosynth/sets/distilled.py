"""Stage 4, the distilled-set format: plain files any tool can read, written atomically.

A set folder holds ``images/000000.png ...``, ``pairs.jsonl`` (index, image, caption, members),
``embeddings.safetensors`` (prototype tensors; its one metadata entry, ``text_space``, names the
embedding space of the text tensors), ``preview.png``, ``metadata.jsonl`` and ``README.md`` (which make
the folder a Hugging Face ``imagefolder`` dataset, ``card.py``) and, written last, ``manifest.json`` with the sha256 of
every other file. Everything is written into a hidden temporary sibling folder and renamed into
place when complete, so an interrupted run never leaves a folder that looks like a set.
"""

from __future__ import annotations

import json
import os
import shutil
import textwrap
import time
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont, UnidentifiedImageError
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file
from torch.utils.data import Dataset

from ..errors import P, ProtosynthError
from ..util.files import (
    Claim,
    atomic_path,
    check_folder,
    check_writable,
    remove_stale_temps,
    save_safetensors_atomic,
    sha256_file,
    why_not_renamable,
)
from ..util.imageops import to_rgb
from .card import CARD, METADATA, write_hub_files

MANIFEST = "manifest.json"
# what a set stores to be read without its corpus (``sets.texts`` fills them)
MEMBER_IMAGES = "member_images.json"
# reading -> (the pair-index field, the aligned captions field) of a pair record
READING_FIELDS = {"members": ("members", "captions_members"), "image": ("image_pairs", "captions_image")}


def set_destination(out: Path) -> Path:
    """Where a set for ``out`` goes: a symlink is followed (the set is written where it points and
    the link stays), anything else is ``out`` itself."""
    out = Path(out)
    return Path(os.path.realpath(out)) if out.is_symlink() else out


def check_out_dir(out: Path, force: bool) -> None:
    """Refuse a non-empty ``--out`` unless ``--force``, and even with it anything but an earlier set:
    ``--force`` replaces distilled sets, never the working folder or an unrelated one. The set is
    written beside ``out`` and renamed into place, so ``out``'s parent must take new entries and
    ``out`` itself, when it exists, must be a folder that can be renamed away."""
    out = set_destination(out)
    if out.exists() and not out.is_dir():
        raise ProtosynthError(f"{P.out} {out} is a file, not a folder")
    check_writable(out.parent, f"{P.out} {out}")
    if not out.exists():
        return
    fixed = why_not_renamable(out)
    if fixed:
        raise ProtosynthError(
            f"{P.out} {out} is {fixed}, which a set cannot replace (it is written beside its folder and renamed "
            f"into place): name a folder inside it, such as {out / 'set'}"
        )
    if not any(out.iterdir()):
        _EMPTY_AT_START[str(out.resolve())] = _folder_id(out)
        return
    why = not_a_set(out)
    if why:
        raise ProtosynthError(f"{P.out} {out} exists and is not a distilled set ({why}); name another folder")
    if not force:
        raise ProtosynthError(f"{P.out} {out} holds a distilled set; pass {P.force(True)} to replace it")
    if Path.cwd().resolve().is_relative_to(out.resolve()):
        raise ProtosynthError(f"{P.out} {out} holds the working folder; {P.force} only replaces sets")


# The empty folders ``check_out_dir`` accepted as ``out`` before a run's work, by path: (device,
# inode). Only that folder, still empty, may be replaced without ``force`` when the set is renamed
# into place; an empty folder made during the run is another inode, and stays.
_EMPTY_AT_START: dict[str, tuple[int, int] | None] = {}


def set_claim(out: Path, force: bool) -> Claim:
    """What the set writer may replace at ``out`` at the moment it renames the finished set into
    place: the empty folder ``check_out_dir`` found there before the work, and with ``force`` an
    earlier set; never something that appeared or changed during the run (it is kept, and the
    result too)."""

    def refusal(path: Path) -> str | None:
        if path.is_dir() and not path.is_symlink():
            found = _EMPTY_AT_START.get(str(path.resolve()))
            if found is not None and found == _folder_id(path) and not any(path.iterdir()):
                return None
            if force and not_a_set(path) is None:
                return None
        return "appeared or changed while this run was writing"

    return Claim(f"{P.out} {out}", refusal)


FORMAT = "protosynth-distilled/1"


def not_a_set(folder: Path) -> str | None:
    """Why ``folder`` is not a set this package wrote and may replace, or None when it is: its
    ``manifest.json`` must be ours (our format, a file list) and the folder must hold nothing that
    list does not name, so a folder a user added files to, or another tool's, is never deleted."""
    try:
        manifest = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
    except FileNotFoundError:
        return f"no {MANIFEST}"
    except (OSError, UnicodeDecodeError, ValueError):
        return f"its {MANIFEST} is not readable JSON"
    if (
        not isinstance(manifest, dict)
        or manifest.get("format") != FORMAT
        or not isinstance(manifest.get("files"), dict)
    ):
        return f"its {MANIFEST} is not a protosynth set manifest"
    listed = {MANIFEST, *manifest["files"]}
    dirs = {str(parent) for name in listed for parent in Path(name).parents if str(parent) != "."}
    for path in sorted(folder.rglob("*")):
        name = path.relative_to(folder).as_posix()
        if path.is_dir() and not path.is_symlink() and name in dirs:
            continue
        if name not in listed or not path.is_file() or path.is_symlink():
            return f"{name} is not one of its files"
    return None


def pair_tensors(image_raw: np.ndarray, text_raw: np.ndarray) -> dict[str, torch.Tensor]:
    """The embeddings file's four tensors for real pairs (a coreset, a selection): raw and unit rows."""
    image_raw, text_raw = np.asarray(image_raw, np.float32), np.asarray(text_raw, np.float32)

    def unit(x: np.ndarray) -> np.ndarray:
        return x / np.linalg.norm(x, axis=1, keepdims=True).clip(1e-12)

    return {
        "image_raw": torch.from_numpy(image_raw),
        "image_normalised": torch.from_numpy(unit(image_raw)),
        "text_raw": torch.from_numpy(text_raw),
        "text_normalised": torch.from_numpy(unit(text_raw)),
    }


def manifest_header(
    method: str, budget: int, mode: str | None, seed: int, corpus, clip, text_space: str | None = None
) -> dict:
    """The manifest fields every set has, whatever made it (PDS, a coreset, a baseline); a set made
    without a CLIP (the optimisation baselines) has ``clip: None`` and names its ``text_space``."""
    return {
        "format": FORMAT,
        "method": method,
        "budget": budget,
        "mode": mode,
        "seed": seed,
        "corpus": corpus_record(corpus),
        "clip": {"spec": clip.spec, "space": clip.space, "dim": clip.embed_dim} if clip is not None else None,
        "text_space": text_space or clip.space,
    }


def corpus_record(corpus) -> dict:
    """The manifest's ``corpus`` entry: what was read, with the options needed to read it the same
    way again (``image_root``, ``skip_bad``, the columns of a table) and how many unreadable images
    --skip-bad dropped (the first few named)."""
    return {
        "spec": corpus.spec,
        "fingerprint": corpus.fingerprint,
        "images": corpus.n_images,
        "pairs": corpus.n_pairs,
        "image_root": str(corpus.image_root) if corpus.image_root else None,
        "skip_bad": corpus.skip_bad,
        "image_column": corpus.image_column,
        "caption_column": corpus.caption_column,
        "skipped_bad": len(corpus.skipped),
        "skipped_first": corpus.skipped[:10],
    }


def check_budget(budget: int, corpus) -> None:
    if budget > corpus.n_pairs:
        raise ProtosynthError(f"{P.budget} {budget} is larger than the {corpus.n_pairs} pairs of corpus {corpus.spec}")


def preview_grid(
    images: list[Image.Image], captions: list[str], max_items: int = 48, cols: int = 8, scale: int = 96
) -> Image.Image:
    """A grid of the first images, each with its caption wrapped underneath."""
    n = min(len(images), max_items)
    font = ImageFont.load_default()
    cell_w, text_h = scale + 24, 52
    rows = max(1, -(-n // cols))
    canvas = Image.new("RGB", (cols * cell_w, rows * (scale + text_h)), "white")
    draw = ImageDraw.Draw(canvas)
    for i in range(n):
        x, y = (i % cols) * cell_w, (i // cols) * (scale + text_h)
        canvas.paste(to_rgb(images[i]).resize((scale, scale), Image.NEAREST), (x + 12, y + 2))
        lines = textwrap.wrap(captions[i], width=20)[:4]
        for j, line in enumerate(lines):
            draw.text((x + 2, y + scale + 4 + 11 * j), line, fill="black", font=font)
    return canvas


def write_distilled(
    out: Path,
    images: list[Image.Image],
    pairs: list[dict],
    tensors: dict[str, torch.Tensor],
    manifest: dict,
    text_space: str,
    force: bool = False,
    member_images: dict | None = None,
    finish: Callable[[Path, dict], dict] | None = None,
) -> Path:
    """Write a set to ``out`` atomically; ``manifest`` gets ``files`` (sha256) and is written last.
    ``member_images`` (``sets.texts.member_images``) becomes ``member_images.json``. ``finish``: called
    with the complete set in its temporary folder (manifest and hashes written, so it loads and
    verifies as a set) and its manifest, it returns the manifest to keep; the card and the hashes are
    written again from it before the folder is renamed into place, so no set is ever seen without
    what ``finish`` adds (``distill``'s text reading chosen on a validation split)."""
    started = time.time()
    with _set_folder(out, force) as tmp:
        (tmp / "images").mkdir()
        for rec, im in zip(pairs, images):
            im.save(tmp / rec["image"], format="PNG")
        with open(tmp / "pairs.jsonl", "w", encoding="utf-8") as fh:
            for rec in pairs:
                fh.write(json.dumps(rec, sort_keys=True) + "\n")
        # a single metadata entry: safetensors writes several in an order that varies between runs,
        # which would break byte-identical output
        save_safetensors_atomic(
            {k: v.contiguous().float() for k, v in tensors.items()},
            tmp / "embeddings.safetensors",
            metadata={"text_space": text_space},
        )
        preview_grid(images, [p["caption"] for p in pairs]).save(tmp / "preview.png", format="PNG")
        if member_images is not None:
            (tmp / MEMBER_IMAGES).write_text(json.dumps(member_images, sort_keys=True))
        manifest = _seal(tmp, pairs, manifest, started)
        if finish is not None:
            manifest = finish(tmp, manifest)
            # "write" counts the writing alone, not the time ``finish`` took
            manifest = _seal(tmp, pairs, manifest, time.time() - manifest["seconds"]["write"])
    return out


def reseal_set(folder: Path, out: Path, manifest: dict, force: bool = False) -> Path:
    """Write the complete set at ``folder`` to ``out`` under ``manifest``, as ``write_distilled`` would
    have written its images, pairs and tensors with that manifest: every file its manifest lists is
    copied as it is but the card (``metadata.jsonl``, ``README.md``), which is made again from
    ``manifest``, and the manifest is written last with the sha256 of every file and its own ``write``
    seconds. The same guarantees as ``write_distilled``: written beside ``out`` and renamed into place
    (``--force`` and what may be replaced: ``set_claim``), never half-written; a copied file whose
    sha256 is not the one ``folder``'s manifest records is an error and nothing is written. No file is
    read into memory whole (``distill``'s render choice: a candidate set from its scratch folder)."""
    started = time.time()
    files = read_manifest(folder).get("files")
    if not isinstance(files, dict) or "pairs.jsonl" not in files:
        raise ProtosynthError(f"{folder}: not a complete distilled set ({MANIFEST} lists no pairs.jsonl)")
    kept = {name: digest for name, digest in files.items() if name not in (METADATA, CARD)}
    with _set_folder(out, force) as tmp:
        for name in sorted(kept):
            (tmp / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(folder / name, tmp / name)
        sealed = _seal(tmp, _read_pairs(tmp), manifest, started)
        changed = [name for name, digest in sorted(kept.items()) if sealed["files"][name] != digest]
        if changed:
            more = f" (and {len(changed) - 1} more files)" if len(changed) > 1 else ""
            raise ProtosynthError(
                f"{folder / changed[0]}: differs from the manifest{more}; the set is not as it was written"
            )
    return out


@contextmanager
def _set_folder(out: Path, force: bool) -> Iterator[Path]:
    """The temporary folder a set for ``out`` is written into, renamed into place when the block ends
    without an error (``atomic_path``, with ``set_claim``'s rule on what it may replace)."""
    target = set_destination(out)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(target.parent, target.name)  # what killed runs writing this set left behind
    # the old set (with --force) is moved aside only once the new one is complete, then deleted;
    # what is at ``out`` then is checked again (anything may have appeared there during the run)
    with atomic_path(target, directory=True, claim=set_claim(out, force)) as tmp:
        yield tmp


def _read_pairs(root: Path) -> list[dict]:
    return [json.loads(line) for line in (root / "pairs.jsonl").read_text().splitlines() if line.strip()]


def _seal(folder: Path, pairs: list[dict], manifest: dict, started: float) -> dict:
    """Write the card (made from ``manifest``) and the manifest with the sha256 of every other file of
    the set being written at ``folder``; returns the manifest written."""
    write_hub_files(folder, pairs, manifest)  # an imagefolder dataset too: metadata.jsonl, README.md
    files = sorted(p for p in folder.rglob("*") if p.is_file() and p.relative_to(folder).as_posix() != MANIFEST)
    manifest = dict(manifest, files={str(p.relative_to(folder)): sha256_file(p) for p in files})
    manifest["seconds"] = dict(manifest.get("seconds") or {}, write=round(time.time() - started, 2))
    (folder / MANIFEST).write_text(json.dumps(manifest, indent=2, sort_keys=True))
    return manifest


@dataclass
class DistilledSet(Dataset):
    """A distilled set as a torch Dataset of (image in [0, 1] CHW, caption, text embedding)."""

    root: Path
    manifest: dict
    pairs: list[dict]
    tensors: dict[str, torch.Tensor]
    metadata: dict[str, str]
    member_images: dict | None = None  # member_images.json: keys and digests of the members' images

    def __len__(self) -> int:
        return len(self.pairs)

    def image(self, i: int) -> Image.Image:
        name = self.pairs[i].get("image")
        if not isinstance(name, str) or not name:
            raise ProtosynthError(f"{self.root / 'pairs.jsonl'}: pair {i} names no image")
        return decode_image(self.root / name)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, str, torch.Tensor]:
        arr = np.asarray(self.image(i), dtype=np.float32) / 255.0
        text = self.tensors.get("text_normalised", self.tensors.get("text"))
        return torch.from_numpy(arr).permute(2, 0, 1), self.pairs[i]["caption"], text[i]

    @property
    def text_reading(self) -> str:
        """The text reading the set declares (manifest ``evaluation.text``): what ``eval --text auto``
        scores it with unless the set's stored embeddings are in the protocol's text space."""
        return self.manifest.get("evaluation", {}).get("text", "captions")

    def scored_captions(self, reading: str | None = None) -> list[list[str]] | None:
        """Per pair, the real captions whose mean (in the protocol's text space, each listed caption
        weighing 1/len) is the text a ``reading`` (default: ``text_reading``) trains on: ``captions``
        the pair's caption, ``members`` and ``image`` the captions the set stores for them. None for
        a set made before those were stored (its reading needs the source corpus)."""
        reading = reading or self.text_reading
        if reading == "captions":
            return [[p.get("caption")] for p in self.pairs]
        if reading not in READING_FIELDS:
            raise ProtosynthError(f"{P.text} {reading!r}: use captions, {' or '.join(READING_FIELDS)}")
        key = READING_FIELDS[reading][1]
        if not all(isinstance(p.get(key), list) and p[key] for p in self.pairs):
            return None
        return [list(p[key]) for p in self.pairs]


def decode_image(path: Path) -> Image.Image:
    """The RGB image at ``path`` (a file of a set), or one error naming the file and what is wrong."""
    try:
        with Image.open(path) as im:
            return to_rgb(im)
    except FileNotFoundError:
        raise ProtosynthError(f"{path}: missing") from None
    except UnidentifiedImageError:
        raise ProtosynthError(f"{path}: cannot be decoded (not an image format PIL reads)") from None
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as exc:
        raise ProtosynthError(f"{path}: cannot be decoded ({one_line(exc)})") from None


def one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


def file_problem(root: Path, name: str, digest: str) -> str | None:
    """What is wrong with file ``name`` of the set at ``root``, whose manifest records ``digest``
    (its sha256), or None when it is intact: ``missing``, ``cannot be decoded`` (a changed image PIL
    cannot read) or ``differs from the manifest``."""
    path = root / name
    if not path.is_file():
        return "missing"
    if sha256_file(path) == digest:
        return None
    if path.suffix.lower() == ".png":
        try:
            decode_image(path)
        except ProtosynthError as exc:
            return str(exc).removeprefix(f"{path}: ")
    return "differs from the manifest (its sha256 changed after the set was written)"


def set_problems(root: Path, manifest: dict) -> tuple[int, list[tuple[Path, str]]]:
    """Every file the manifest lists, checked against its sha256: (files checked, [(path, problem)])."""
    files = manifest.get("files")
    if not isinstance(files, dict) or not files:
        return 0, [(root / MANIFEST, "records no file hashes (files)")]
    problems = []
    for name, digest in sorted(files.items()):
        why = file_problem(root, name, str(digest))
        if why is not None:
            problems.append((root / name, why))
    return len(files), problems


# Manifest entries its readers take as JSON objects (``manifest.get("corpus", {}).get("spec")``): an
# entry edited into another shape is refused when the set is opened, not met as a TypeError later.
OBJECT_ENTRIES = ("corpus", "evaluation", "protocol")  # absent or an object
OPTIONAL_OBJECT_ENTRIES = ("clip", "decoder", "render_fidelity", "settings", "versions", "seconds")  # or null


def manifest_problem(manifest) -> str | None:
    """What makes ``manifest`` (parsed manifest.json) other than the shape a set's readers rely on, or None."""
    if not isinstance(manifest, dict):
        return f"not a JSON object (a {type(manifest).__name__})"
    for key in OBJECT_ENTRIES + OPTIONAL_OBJECT_ENTRIES:
        value = manifest.get(key)
        if key in manifest and not isinstance(value, dict) and not (value is None and key in OPTIONAL_OBJECT_ENTRIES):
            return f"its '{key}' entry is not a JSON object"
    corpus = manifest.get("corpus", {})
    for key in ("spec", "fingerprint"):
        if corpus.get(key) is not None and not isinstance(corpus[key], str):
            return f"its 'corpus.{key}' entry is not a string"
    return None


def read_manifest(path: str | Path) -> dict:
    """The manifest of the set at ``path``, read and checked for the shape its readers rely on (one
    error naming the folder or the file otherwise); its files are not checked (``load_distilled``)."""
    root = Path(path)
    if not (root / MANIFEST).is_file():
        raise ProtosynthError(f"{root}: not a complete distilled set (no {MANIFEST})")
    try:
        manifest = json.loads((root / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise ProtosynthError(f"{root}: unreadable distilled set ({MANIFEST}: {exc})") from None
    why = manifest_problem(manifest)
    if why:
        raise ProtosynthError(f"{root / MANIFEST}: {why}; not a distilled set's manifest as this package writes it")
    return manifest


def load_distilled(path: str | Path, verify: bool = False) -> DistilledSet:
    """Open a complete set folder; ``verify`` first checks every file against the sha256 its manifest
    records (reads every file once), so a set changed after it was written is
    refused, naming the file, before anything is read from it. A set another run replaces (``--force``)
    while it is read is read again, whole, from the new folder."""
    root = Path(path)
    check_folder(root)
    for _ in range(READ_TRIES):
        before = _folder_id(root)
        try:
            ds = _load(root, verify)
        except ProtosynthError:
            if _folder_id(root) == before:
                raise
            continue
        if _folder_id(root) == before:
            return ds
    raise ProtosynthError(f"{root}: another run kept replacing this set while it was read; try again when it ends")


READ_TRIES = 3


def _folder_id(root: Path) -> tuple[int, int] | None:
    """Which folder ``root`` names now (device, inode): a replaced set is another folder."""
    try:
        st = os.stat(root)
    except OSError:
        return None
    return st.st_dev, st.st_ino


def _load(root: Path, verify: bool) -> DistilledSet:
    manifest = read_manifest(root)
    try:
        if verify:
            _, problems = set_problems(root, manifest)
            if problems:
                where, why = problems[0]
                more = f" (and {len(problems) - 1} more files)" if len(problems) > 1 else ""
                raise ProtosynthError(f"{where}: {why}{more}; the set is not as it was written: remake it")
        pairs = _read_pairs(root)
        tensors = load_file(str(root / "embeddings.safetensors"))

        with safe_open(str(root / "embeddings.safetensors"), "pt") as fh:
            metadata = dict(fh.metadata() or {})
        hashes = root / MEMBER_IMAGES
        member_images = json.loads(hashes.read_text()) if MEMBER_IMAGES in manifest.get("files", {}) else None
    except (OSError, ValueError, SafetensorError) as exc:
        raise ProtosynthError(f"{root}: unreadable distilled set ({exc})") from None
    if not pairs:
        raise ProtosynthError(f"{root}: distilled set has no pairs")
    return DistilledSet(root, manifest, pairs, tensors, metadata, member_images)

"""webdataset tar shards: a path to one uncompressed ``.tar`` or a glob (``*``/``?``) over several,
read in sorted order. Members are grouped into samples by key, the member name up to the first dot
after the last slash (``dir/000123.jpg`` and ``dir/000123.txt`` are sample ``dir/000123``). The
image is the ``jpg``, ``jpeg``, ``png`` or ``webp`` member; the caption the ``txt`` member (the
whole text, one caption) or else the ``json`` member's ``caption`` string or ``captions`` list.
Members with other extensions are ignored, as webdataset does.

Each shard's member offsets are indexed once at load (``TarInfo.offset_data``), so an image is
read by seeking into the shard: random access without unpacking, as the embedding stage needs.

``scan_webdataset`` reads the shards as the load does, one at a time, but keeps only each sample's
caption count (the load's fingerprint, pair -> image rows and one-line errors); ``stream`` hands the
shards to ``corpora.window.windows`` to be read again in windows of a few store shards, and
``read_member`` reads an image by the (shard, offset, length) a corpus index records.
"""

from __future__ import annotations

import glob
import hashlib
import json
import tarfile
from array import array
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image

from ..errors import ProtosynthError
from .base import (
    BadCheck,
    Corpus,
    FindBad,
    ImageRef,
    ImageSource,
    check_images,
    clean_captions,
    decode,
    kept_pairs,
    unreadable,
)
from .window import Record, Stream, last_images

IMAGE_EXTS = ("jpg", "jpeg", "png", "webp")
CAPTION_EXTS = ("txt", "json")


@dataclass(frozen=True)
class Member:
    shard: Path
    name: str
    offset: int
    size: int


class TarImages(ImageSource):
    """Image members of tar shards, by sample key ``SHARD/KEY``; read by seek, one open per read
    (so it works unchanged in forked data-loader workers)."""

    def __init__(self, members: dict[str, Member]):
        self.members = members

    def where(self, key: str) -> str:
        m = self.members[key]
        return f"{m.shard} member {m.name}"

    def read(self, key: str, min_side: int | None = None) -> Image.Image:
        m = self.members[key]
        try:
            with open(m.shard, "rb") as fh:
                fh.seek(m.offset)
                data = fh.read(m.size)
        except OSError as exc:
            raise ProtosynthError(f"{self.where(key)}: cannot read the shard ({exc.strerror or exc})") from None
        if len(data) != m.size:
            raise ProtosynthError(f"{self.where(key)}: the shard ends inside this member (truncated)")
        return decode(data, self.where(key), m.name, min_side)

    def locate(self, key: str) -> ImageRef:
        m = self.members[key]
        return ImageRef(str(m.shard), m.offset, m.size)


def shard_paths(spec: str) -> list[Path]:
    if "*" in spec or "?" in spec:
        paths = sorted(Path(p) for p in glob.glob(spec) if Path(p).is_file())
        if not paths:
            raise ProtosynthError(f"corpus {spec!r}: the glob matches no files")
        return paths
    if not Path(spec).is_file():
        raise ProtosynthError(f"corpus {spec!r}: no such file")
    return [Path(spec)]


def split_name(name: str) -> tuple[str, str]:
    """``dir/000123.seg.png`` -> (``dir/000123``, ``seg.png``): webdataset's key and extension."""
    folder, _, base = name.rpartition("/")
    stem, dot, ext = base.partition(".")
    return (f"{folder}/{stem}" if folder else stem), (ext.lower() if dot else "")


def index_shard(shard: Path) -> dict[str, dict[str, tuple[tarfile.TarInfo, bytes | None]]]:
    """Sample key -> {extension: (member, bytes of a caption member)}, in first-seen order. Caption
    members are small and read during the one pass; images are only located."""
    samples: dict[str, dict[str, tuple[tarfile.TarInfo, bytes | None]]] = {}
    try:
        with tarfile.open(shard, "r:") as tar:
            for info in tar:
                key, ext = split_name(info.name)
                if not info.isfile() or ext not in IMAGE_EXTS + CAPTION_EXTS:
                    continue
                sample = samples.setdefault(key, {})
                if ext in sample:
                    raise ProtosynthError(f"{shard} member {info.name}: a second '{ext}' member for sample {key}")
                sample[ext] = (info, tar.extractfile(info).read() if ext in CAPTION_EXTS else None)
    except (tarfile.TarError, OSError) as exc:
        raise ProtosynthError(f"{shard}: not a readable uncompressed tar file ({exc})") from None
    return samples


def no_caption(shard: Path, sample: dict[str, tuple[tarfile.TarInfo, bytes | None]], key: str) -> str | None:
    """Why a sample has no caption (naming its shard and image member), or None when it has one."""
    if "txt" in sample or "json" in sample:
        return None
    image = next((sample[ext][0].name for ext in IMAGE_EXTS if ext in sample), None)
    where = f"{shard} member {image}" if image else f"{shard} sample {key}"
    return f"{where}: no caption member (txt or json)"


def parse_caption(shard: Path, sample: dict[str, tuple[tarfile.TarInfo, bytes | None]], key: str) -> list[str]:
    why = no_caption(shard, sample, key)
    if why:
        raise ProtosynthError(why)
    ext = "txt" if "txt" in sample else "json"
    info, data = sample[ext]
    where = f"{shard} member {info.name}"
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise ProtosynthError(f"{where}: not valid UTF-8") from None
    if ext == "txt":
        return clean_captions([text], where)
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ProtosynthError(f"{where}: not valid JSON ({exc.msg})") from None
    if not isinstance(obj, dict):
        raise ProtosynthError(f"{where}: needs a JSON object with 'caption' or 'captions'")
    return clean_captions([obj["caption"]] if "caption" in obj else obj.get("captions"), where)


def shard_samples(shard: Path, skip_bad: bool, incomplete: dict[str, str]) -> Iterator[tuple[str, Member, list[str]]]:
    """The samples of one shard as ``load_webdataset`` reads them, in first-seen key order: (key
    ``SHARD/KEY``, its image member, its captions). A sample without an image or a caption member is
    the error naming it, or with ``skip_bad`` recorded in ``incomplete`` and not yielded. What is held
    is one shard's members and caption bytes (``index_shard``), never more than that shard's."""
    for key, sample in index_shard(shard).items():
        images = [ext for ext in IMAGE_EXTS if ext in sample]
        if len(images) > 1:
            raise ProtosynthError(f"{shard} sample {key}: several image members ({', '.join(images)})")
        full_key = f"{shard}/{key}"
        why = no_caption(shard, sample, key)
        if why is None and not images:
            why = f"{shard} sample {key}: no image member ({', '.join(IMAGE_EXTS)})"
        if why is not None:
            if not skip_bad:
                raise ProtosynthError(why)
            incomplete[full_key] = why
            continue
        caps = parse_caption(shard, sample, key)
        info = sample[images[0]][0]
        yield full_key, Member(shard, info.name, info.offset_data, info.size), caps


def _stat_line(shard: Path) -> tuple[bytes, tuple[int, int]]:
    """What the fingerprint hashes of a shard (its resolved path, size and mtime), and (size, mtime)."""
    st = shard.stat()
    return f"{shard.resolve()}\0{st.st_size}\0{st.st_mtime_ns}\n".encode(), (st.st_size, st.st_mtime_ns)


def _no_samples(spec: str) -> ProtosynthError:
    return ProtosynthError(f"corpus {spec!r}: the shards hold no samples ({', '.join(IMAGE_EXTS)} + txt/json)")


def load_webdataset(spec: str, skip_bad: bool = False, find_bad: FindBad = unreadable) -> Corpus:
    """Index every shard of ``spec``. A sample without an image member or without a caption member
    is an error naming it; with ``skip_bad`` it is skipped and counted, as an unreadable image is. (A
    caption member that is there but bad, empty or not valid JSON, stays an error: ``skip_bad``
    drops what cannot be read, not what was written wrong.)"""
    members: dict[str, Member] = {}
    captions: list[list[str]] = []
    incomplete: dict[str, str] = {}  # samples without an image or a caption member
    h = hashlib.sha256()
    for shard in shard_paths(spec):
        h.update(_stat_line(shard)[0])
        for full_key, member, caps in shard_samples(shard, skip_bad, incomplete):
            members[full_key] = member
            captions.append(caps)
    if not members and not incomplete:
        raise _no_samples(spec)
    keys = list(members)
    source = TarImages(members)
    bad = check_images(spec, keys, source, skip_bad, found=incomplete, find_bad=find_bad)
    kept = [i for i, key in enumerate(keys) if key not in bad]
    for key in bad:
        h.update(f"skipped\0{key}\n".encode())
    return Corpus(
        spec=spec,
        fingerprint=f"wds-{h.hexdigest()[:16]}",
        image_keys=[keys[i] for i in kept],
        captions=[captions[i] for i in kept],
        source=source,
        skip_bad=skip_bad,
        skipped=list(bad.values()),
    )


@dataclass
class WdsScan:
    """What ``scan_webdataset`` learns in one pass: the fingerprint, ``pair_image`` and image count
    ``load_webdataset`` would give, and what a later streaming pass (``stream``) needs: the shards and
    each one's (size, mtime) the fingerprint hashed; with ``--skip-bad``, the keys of the samples it
    dropped (which the streaming pass leaves out) and their messages."""

    spec: str
    shards: list[Path]
    fingerprint: str
    pair_image: np.ndarray
    n_images: int
    stats: list[tuple[int, int]]
    skip_bad: bool = False
    dropped: set[str] = field(default_factory=set)  # ``SHARD/KEY`` of each sample --skip-bad dropped
    skipped: list[str] = field(default_factory=list)  # one line per dropped sample, in the load's order


def scan_webdataset(spec: str, find_bad: FindBad | None = None) -> WdsScan:
    """``load_webdataset(spec)``'s fingerprint, ``pair_image`` and image count, with the same one-line
    errors, reading the shards one at a time as the load does (``shard_samples``) but keeping only
    each sample's caption count: 4 bytes a sample, not its captions, key or member.

    ``find_bad`` (``--skip-bad``): a sample without an image or a caption member is dropped, and the
    other samples' images are handed, ``base.CHECK_WINDOW`` at a time in sample order, to ``find_bad``
    (``base.BadCheck``: in this process or in Ray tasks) through ``TarImages`` as the load reads them;
    only the dropped samples are kept. The result is then ``load_webdataset(spec, skip_bad=True)``'s:
    the kept samples renumbered, the member-less samples then the undecodable ones hashed into the
    fingerprint, the same messages, warning or every-image-bad error."""
    shards = shard_paths(spec)
    h = hashlib.sha256()
    counts, stats = array("I"), []
    check = None if find_bad is None else BadCheck(find_bad, lambda _wheres, at: TarImages(dict(at)))
    for shard in shards:
        line, stat = _stat_line(shard)
        h.update(line)
        stats.append(stat)
        for key, member, caps in shard_samples(shard, check is not None, {} if check is None else check.found):
            if check is not None:
                check.add(key, f"{shard} member {member.name}", member)
            counts.append(len(caps))
    if not counts and not (check is not None and check.found):
        raise _no_samples(spec)
    pair_image, n_images, skipped, dropped = kept_pairs(spec, counts, check, h)
    fingerprint = f"wds-{h.hexdigest()[:16]}"
    return WdsScan(spec, shards, fingerprint, pair_image, n_images, stats, check is not None, dropped, skipped)


def stream(got: WdsScan) -> Stream:
    """The shards ``scan_webdataset`` read, as ``corpora.window.windows`` streams them again: one
    record per sample (a sample is an image), images read by seek through ``TarImages`` as the load
    reads them."""
    return Stream(
        got.spec,
        got.fingerprint,
        got.pair_image,
        lambda: _records(got),
        last_images,
        lambda wheres, at: TarImages(dict(at)),
    )


def _records(got: WdsScan) -> Iterator[Record]:
    """Every kept sample's record, in order (a sample ``--skip-bad`` dropped is left out), one shard
    read at a time; the load's error when a shard's size or mtime (what the fingerprint hashed)
    differs from the scan's, checked before it is read and again after the last one, or the sample
    count changed."""
    changed = ProtosynthError(f"corpus {got.spec!r}: changed while it was read; run again")
    i = 0
    for shard, stat in zip(got.shards, got.stats):
        if _stat_line(shard)[1] != stat:
            raise changed
        for key, member, caps in shard_samples(shard, got.skip_bad, {}):
            if key in got.dropped:
                continue
            yield i, key, f"{shard} member {member.name}", member, caps
            i += 1
    if [_stat_line(p)[1] for p in got.shards] != got.stats or i != got.n_images:
        raise changed


def read_member(file: str, offset: int, length: int, where: str) -> Image.Image:
    """The image a corpus index row names by its shard, the member's byte offset and length (and
    ``where``, ``SHARD member NAME``): how a summarised webdataset corpus (``corpus.scan_source``)
    reads the images of the pairs it writes, by seek, with ``TarImages``' errors."""
    prefix = f"{file} member "
    name = where[len(prefix) :] if where.startswith(prefix) else where
    member = Member(Path(file), name, int(offset), int(length))
    return TarImages({name: member}).read(name)

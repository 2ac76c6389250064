"""What a set stores so that it is scored, loaded and checked without its source corpus.

Each pair record carries the real captions its text readings average, one entry per real pair, so
the mean (each listed caption weighing 1/len, a caption shared by two member pairs listed twice) is
the one the corpus would give:

- ``captions_members``: the caption of each pair in ``members``, in that order (``--text members``);
- ``image_pairs`` / ``captions_image``: the pairs of the one real image the pair shows or starts
  from (a render's start member, a selection's pair, a coreset's or a baseline's one member) and
  their captions (``--text image``).

``member_images.json`` holds the key and pixel digest (``world.image_digest``) of every real image
the set's members show, so the train/test overlap check needs no corpus either.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np

from ..corpora.rows import CorpusRows, PairRows, as_rows
from ..corpora.shapes import image_digest
from ..corpora.summary import CorpusSummary
from ..corpus import Corpus, cache_dir, check_cache_writable
from ..util.files import write_text_atomic
from .distilled import MEMBER_IMAGES, READING_FIELDS  # noqa: F401 (re-exported: the fields this module fills)

# the pair each rule of the "image" family starts from: a render's start member, a selection's pair,
# a coreset's one member
OWN_PAIR_FIELDS = ("start_pair", "selected_pair")


def own_pair(p: dict) -> int | None:
    """The real pair whose image the pair shows or starts from, or None (a render from noise)."""
    for key in OWN_PAIR_FIELDS:
        if key in p:
            return int(p[key])
    members = p.get("members") or []
    return int(members[0]) if len(members) == 1 else None


def pairs_of_images(corpus: Corpus, images: set[int]) -> dict[int, list[int]]:
    """image index -> its caption-level pairs (ascending), for the given images."""
    return CorpusRows(corpus).pairs_of_images(images)


def with_reading_texts(pairs: list[dict], source: Corpus | PairRows) -> list[dict]:
    """The pair records with the captions of their ``members`` and ``image`` readings added.
    ``source``: the corpus, or a reader of its rows (``corpora.rows``: the corpus index reads only
    the shards holding these pairs); every caption is read in one call, so each shard once."""
    rows = as_rows(source)
    own = [own_pair(p) for p in pairs]
    owned = [o for o in own if o is not None]
    image_of = dict(zip(owned, rows.images(owned).tolist()))
    of_image = rows.pairs_of_images(set(image_of.values()))
    wanted = [[int(m) for m in p.get("members") or []] for p in pairs]
    wanted += [of_image[image_of[o]] for o in owned]
    flat = rows.captions([q for group in wanted for q in group])
    ends = np.cumsum([len(group) for group in wanted])
    texts = [flat[e - len(group) : e] for e, group in zip(ends.tolist(), wanted)]
    members, images = texts[: len(pairs)], iter(zip(wanted[len(pairs) :], texts[len(pairs) :]))
    out = []
    for p, o, caps in zip(pairs, own, members):
        rec = dict(p, captions_members=caps)
        if o is not None:
            rec["image_pairs"], rec["captions_image"] = next(images)
        out.append(rec)
    return out


def _digest_cache(corpus: Corpus | CorpusSummary) -> Path:
    return cache_dir() / "hashes" / f"{hashlib.sha256(corpus.fingerprint.encode()).hexdigest()[:24]}.json"


def cached_digests(corpus: Corpus | CorpusSummary) -> list[bytes] | None:
    """Every image's pixel digest from the cache ``corpus_digests`` writes, or None."""
    path = _digest_cache(corpus)
    if path.is_file():
        try:
            digests = json.loads(path.read_text())
            if len(digests) == corpus.n_images:
                return [bytes.fromhex(d) for d in digests]
        except ValueError:
            pass  # a damaged cache file is recomputed by corpus_digests
    return None


def corpus_digests(corpus: Corpus) -> list[bytes]:
    """Every image's pixel digest, in image order. A file corpus's digests (each image decoded at full
    size, one at a time) are cached by its fingerprint, as its pixels are."""
    if corpus.pixels is not None:  # in memory (the world): nothing to save
        return [image_digest(corpus.image_array(i)) for i in range(corpus.n_images)]
    digests = cached_digests(corpus)
    if digests is not None:
        return digests
    path = _digest_cache(corpus)
    check_cache_writable(path.parent)
    digests = [image_digest(corpus.image_array(i)) for i in range(corpus.n_images)]
    path.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(path, json.dumps([d.hex() for d in digests]))
    return digests


def member_images(pairs: list[dict], corpus: Corpus | CorpusSummary, rows: PairRows | None = None) -> dict:
    """``member_images.json``'s content: [key, hex digest] of every image the pairs' members show.
    ``rows``: where the members' images and keys are read (default: the corpus itself)."""
    rows = rows or CorpusRows(corpus)
    members = [int(m) for p in pairs for m in p.get("members") or []]
    images = sorted(set(rows.images(members).tolist()))
    known = cached_digests(corpus) if corpus.pixels is None else None
    # without a cache, only the member images are decoded (a PDS set's members are most of a corpus),
    # one at a time, through ``rows`` (a summarised corpus's from the index's file references)
    if known:
        digests = [known[i] for i in images]
    else:
        digests = [image_digest(np.asarray(im, dtype=np.uint8)) for im in rows.read_images(images)]
    return {
        "digest": "sha1 of the decoded RGB pixels",
        "images": [[key, d.hex()] for key, d in zip(rows.keys(images), digests)],
    }

"""Turn a distilled set, a corpus or a test split into the tensors a protocol trains and scores on.

Text of a set is used the way it was stored (``--text``):
- ``auto`` (default): the stored text embeddings when their space is the protocol's text space,
  else the text rule the set declares (its manifest's ``evaluation.text``: ``members`` for a
  ``distill`` set made with ``text="members"``), else the set's captions;
- ``captions``: each pair's caption, embedded by the protocol's text encoder;
- ``members``: the mean, in the protocol's text space, of the captions of the real pairs each
  synthetic pair summarises (PDS sets record them);
- ``image``: the mean of every caption of the one real image each pair shows or starts from (a
  render's start member, a selection's pair, a coreset pair);
- ``image-captions``: the mean of every caption of the images those member pairs show (for a coreset
  pair: all captions of its one image), the reference that tells caption averaging apart from
  summarising many scenes;
- ``stored``: the stored embeddings, which must be in the protocol's text space;
- ``prototype``: a rendered PDS set's stored text prototype (``text_raw``, or ``text_normalised``
  where the protocol normalises text), as the PDS authors' evaluation trains its text head on it. It
  needs the protocol's text space to be the set's CLIP (``--protocol pds``, or another protocol with
  that CLIP as its text encoder). A set declaring ``prototype`` (``distill --preset pds-published``)
  is read, under ``auto`` and in any other text space, with ``members``: the mean of the same member
  captions the prototype averages, in the protocol's text space.

The captions of ``members`` and ``image`` are read from the set (``protosynth.sets.texts``); only a set
made before it stored them, and ``image-captions``, read the source corpus.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from ..configs import RECIPES, TEXT_MODES  # noqa: F401 (re-exported: their public home)
from ..corpora.shapes import image_digest
from ..corpus import Corpus, cache_dir, check_cache_writable, load_corpus
from ..errors import P, ProtosynthError
from ..models.backbones import Backbone
from ..models.text_encoders import TextEncoder
from ..sets.distilled import READING_FIELDS, DistilledSet
from ..sets.texts import corpus_digests, own_pair, pairs_of_images
from ..util.files import atomic_open, remove_stale_temps
from ..util.imageops import resized
from .pixels import PixelRows, corpus_pixel_rows, denormalise, normalise
from .retrieval import PairData, TestData

# what a set may declare as its manifest's evaluation.text
SET_TEXT_RULES = ("captions", "members", "image", "prototype")


def to_pixels(images: list[Image.Image], backbone: Backbone, size: int) -> torch.Tensor:
    """(N, 3, size, size) images normalised with the backbone's mean/std (bicubic resize, no crop):
    a set's few images, held in memory (a corpus goes through ``corpus_pixel_rows``)."""
    return PixelRows(np.stack([resized(im, size) for im in images]), backbone.mean, backbone.std)[:]


def encode_texts(encoder: TextEncoder, captions: list[str], normalise: bool) -> torch.Tensor:
    feats = encoder.encode(captions)
    return F.normalize(feats, dim=-1) if normalise else feats


def corpus_text_features(corpus: Corpus, encoder: TextEncoder) -> torch.Tensor:
    """Features of every caption-level pair; each distinct caption is encoded once. Cached on disk
    (by corpus fingerprint and encoder spec) for named encoders; never for a CLIP or a local folder,
    whose weights can change under the same spec."""
    cacheable = _cacheable(encoder)
    key = hashlib.sha256(f"{corpus.fingerprint}\0{encoder.spec}\0{encoder.space}".encode()).hexdigest()[:24]
    path = cache_dir() / "protocol_text" / f"{key}.npy"
    if cacheable and path.is_file():
        arr = np.load(path)
        if arr.shape == (corpus.n_pairs, encoder.dim):
            return torch.from_numpy(arr)
    if cacheable:
        check_cache_writable(path.parent)
    unique, inverse = np.unique(np.asarray(corpus.pair_caption, dtype=object), return_inverse=True)
    feats = encoder.encode([str(c) for c in unique])[torch.from_numpy(inverse.reshape(-1))]
    if not cacheable:
        return feats
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale_temps(path.parent)
    with atomic_open(path) as fh:
        np.save(fh, feats.numpy())
    return feats


def default_test_spec(corpus_spec: str, split: str = "test") -> str:
    """The world's test (or val) split for a world corpus spec (same image size and seed); other
    corpora have no built-in split."""
    head, *opts = corpus_spec.split(",")
    if head.split(":")[0] != "shapes":
        raise ProtosynthError(
            f"the set's corpus {corpus_spec!r} has no built-in {split} split; pass {getattr(P, split)('SPEC')}"
        )
    keep = [o for o in opts if o.partition("=")[0] in ("size", "seed")]
    return ",".join([f"shapes:{split}", *keep])


def test_data(corpus: Corpus, encoder: TextEncoder, backbone: Backbone, size: int, normalise_text: bool) -> TestData:
    if min(len(c) for c in corpus.captions) < 1:
        raise ProtosynthError(f"test corpus {corpus.spec}: every image needs a caption")
    texts = corpus_text_features(corpus, encoder)
    return TestData(
        corpus_pixel_rows(corpus, backbone.mean, backbone.std, size),
        F.normalize(texts, dim=-1) if normalise_text else texts,
        corpus.pair_image.copy(),
    )


def full_data(corpus: Corpus, encoder: TextEncoder, backbone: Backbone, size: int, normalise_text: bool) -> PairData:
    """Every caption-level pair of a corpus (the upper-bound run); images are decoded per batch."""
    pixels = corpus_pixel_rows(corpus, backbone.mean, backbone.std, size)
    texts = corpus_text_features(corpus, encoder)
    texts = F.normalize(texts, dim=-1) if normalise_text else texts
    return PairData(pixels, texts, notes={"text": "captions"}, image_index=torch.from_numpy(corpus.pair_image))


def _stored_text(ds: DistilledSet, normalise: bool) -> torch.Tensor | None:
    for key in ("text", "text_normalised" if normalise else "text_raw"):
        if key in ds.tensors:
            return ds.tensors[key].float()
    return None


def set_data(
    ds: DistilledSet, encoder: TextEncoder, backbone: Backbone, size: int, normalise_text: bool, text_mode: str = "auto"
) -> PairData:
    """A distilled set (or coreset) as training pairs for a protocol."""
    if text_mode not in TEXT_MODES:
        raise ProtosynthError(f"{P.text} {text_mode!r}: use {', '.join(TEXT_MODES)}")
    where = str(ds.root)
    stored_space = ds.metadata.get("text_space") or ds.manifest.get("text_space")
    stored = _stored_text(ds, normalise_text) if stored_space == encoder.space else None
    if text_mode == "stored" and stored is None:
        raise ProtosynthError(
            f"{where}: {P.text('stored')} needs text embeddings in the protocol's text space "
            f"{encoder.space!r}; the set stores {stored_space!r}"
        )
    declared = ds.manifest.get("evaluation", {}).get("text", "captions")
    if declared not in SET_TEXT_RULES:
        raise ProtosynthError(f"{where}: manifest evaluation.text {declared!r}: use {' or '.join(SET_TEXT_RULES)}")
    if text_mode == "auto":
        text_mode = "prototype" if declared == "prototype" else declared if stored is None else "stored"
        if text_mode == "prototype" and stored is None:
            text_mode = "members"  # the prototype's own members, read in the protocol's text space
    if text_mode == "prototype":
        texts, how = _text_prototypes(ds, stored, stored_space, encoder), "prototype"
    elif text_mode == "stored":
        texts, how = stored, "stored"
    elif text_mode in ("members", "image-captions", "image"):
        texts, how = _member_texts(ds, encoder, normalise_text, text_mode), text_mode
    else:
        captions = [p.get("caption") for p in ds.pairs]
        if any(not isinstance(c, str) or not c.strip() for c in captions):
            raise ProtosynthError(
                f"{where}: the set has no usable captions and no text embeddings in the protocol's "
                f"text space {encoder.space!r} (it stores {stored_space!r})"
            )
        texts, how = encode_texts(encoder, captions, normalise_text), "captions"
    if len(texts) != len(ds.pairs):
        raise ProtosynthError(f"{where}: {len(texts)} text embeddings for {len(ds.pairs)} pairs")
    images = _stored_pixels(ds, backbone, size)
    if images is None:
        images = to_pixels([ds.image(i) for i in range(len(ds))], backbone, size)
    lrs = {k: float(ds.tensors[k].reshape(-1)[0]) for k in ("lr_image", "lr_text") if k in ds.tensors}
    sim = ds.tensors.get("similarity")
    if sim is not None and tuple(sim.shape) != (len(ds), len(ds)):
        raise ProtosynthError(f"{where}: similarity matrix of shape {tuple(sim.shape)} for {len(ds)} pairs")
    image_side = ds.manifest.get("evaluation", {}).get("image", "finetune")
    return PairData(
        images,
        texts,
        lrs.get("lr_image"),
        lrs.get("lr_text"),
        notes={"text": how, "learned_lrs": bool(lrs)},
        similarity=sim.float() if sim is not None else None,
        image_head=image_side == "frozen+head",
    )


def protocol_recipe(data: PairData) -> PairData:
    """The pairs without what a method's own recipe adds (soft labels, learned lrs, a frozen
    backbone with a trained head), so the set trains as the protocol trains any set: one recipe per table."""
    return replace(
        data,
        lr_image=None,
        lr_text=None,
        similarity=None,
        image_head=False,
        notes=dict(data.notes, learned_lrs=False),
    )


def recipe_data(data: PairData, recipe: str) -> PairData:
    """The pairs as ``recipe`` (one of RECIPES) trains them: DD-Ranking reports a method with and
    without its soft labels and learned lrs, each separately; the frozen-backbone head comes only
    with the whole own recipe (it is how the method's learner is built, not a part of the set)."""
    if recipe == "own":
        return data
    plain = protocol_recipe(data)
    if recipe == "soft-labels":
        return replace(plain, similarity=data.similarity)
    if recipe == "learned-lrs":
        notes = dict(plain.notes, learned_lrs=data.notes["learned_lrs"])
        return replace(plain, lr_image=data.lr_image, lr_text=data.lr_text, notes=notes)
    return plain


def has_own_recipe(ds: DistilledSet) -> bool:
    """Whether the set stores anything ``protocol_recipe`` drops (learned lrs, soft labels, a frozen-backbone
    head): without, both recipes train it the same way."""
    own = ("lr_image", "lr_text", "similarity")
    return any(k in ds.tensors for k in own) or ds.manifest.get("evaluation", {}).get("image") == "frozen+head"


def unsupported_reading(ds: DistilledSet, mode: str) -> str | None:
    """Why ``set_data`` cannot read ``ds`` with text mode ``mode`` (the pairs lack what it averages), or
    None: a comparison marks such a row instead of evaluating it another way."""
    pairs = ds.pairs
    if mode == "captions" and any(not isinstance(p.get("caption"), str) or not p["caption"].strip() for p in pairs):
        return "a pair has no caption"
    if mode in ("members", "image-captions") and any(not p.get("members") for p in pairs):
        return "a pair has no member pairs"
    if mode == "image" and any(own_pair(p) is None for p in pairs):
        return "a pair shows no one real image (rendered from several members)"
    return None


def _text_prototypes(ds: DistilledSet, stored, stored_space, encoder: TextEncoder) -> torch.Tensor:
    """The stored text prototypes of a rendered PDS set, refused for any other set or text space."""
    if ds.manifest.get("method") != "pds" or "text" in ds.tensors or stored is None:
        raise ProtosynthError(
            f"{ds.root}: {P.text('prototype')} reads the text prototypes a rendered PDS set stores in its CLIP's "
            f"space {stored_space!r}; this set is method {ds.manifest.get('method')!r} and the protocol's text "
            f"space is {encoder.space!r} (use {P.protocol('pds')}, or {P.text('members')} in another space)",
            param="text",
        )
    return stored


def _stored_pixels(ds: DistilledSet, backbone: Backbone, size: int) -> torch.Tensor | None:
    """A baseline's optimised pixels, unclamped as they were learned (the PNGs are clamped to [0, 1]),
    re-normalised for ``backbone`` and resized to ``size`` when those differ from the set's."""
    if "pixels" not in ds.tensors:
        return None
    proto = ds.manifest.get("protocol", {})
    if "mean" not in proto or "std" not in proto:
        raise ProtosynthError(f"{ds.root}: stored pixels without their normalisation (manifest protocol.mean/std)")
    x = denormalise(ds.tensors["pixels"].float(), proto["mean"], proto["std"])
    if x.shape[-1] != size:
        x = F.interpolate(x, size=(size, size), mode="bicubic", align_corners=False)
    return normalise(x, backbone.mean, backbone.std)


def source_corpus(ds: DistilledSet) -> Corpus:
    """The corpus a set was made from, read the way it was then (``image_root``, ``skip_bad``, columns), and
    refused when it changed since: member indices only mean something in the same pair order."""
    rec = ds.manifest.get("corpus", {})
    corpus = load_corpus(
        rec["spec"],
        image_root=rec.get("image_root"),
        skip_bad=bool(rec.get("skip_bad")),
        image_column=rec.get("image_column"),
        caption_column=rec.get("caption_column"),
    )
    if rec.get("fingerprint") and rec["fingerprint"] != corpus.fingerprint:
        raise ProtosynthError(
            f"{ds.root}: corpus {rec['spec']} changed since the set was made (fingerprint "
            f"{rec['fingerprint']}, now {corpus.fingerprint}); its member indices no longer apply"
        )
    return corpus


def _stored_groups(ds: DistilledSet, mode: str) -> list[list[tuple[int, str]]] | None:
    """Each pair's (real pair, caption) list for ``mode`` as the set stores it (``sets.texts``), or None
    for a set made before they were stored (or for ``image-captions``, never stored)."""
    if mode not in READING_FIELDS:
        return None
    index_key, caption_key = READING_FIELDS[mode]
    groups = []
    for p in ds.pairs:
        idx, caps = p.get(index_key), p.get(caption_key)
        if not isinstance(idx, list) or not isinstance(caps, list) or len(idx) != len(caps) or not idx:
            return None
        groups.append([(int(m), str(c)) for m, c in zip(idx, caps)])
    return groups


def _corpus_groups(ds: DistilledSet, mode: str) -> list[list[tuple[int, str]]]:
    """Each pair's (real pair, caption) list for ``mode``, rebuilt from the source corpus."""
    if mode == "image":
        groups = [[own_pair(p)] for p in ds.pairs]
    else:
        groups = [list(p["members"]) for p in ds.pairs]
    try:
        corpus = source_corpus(ds)
    except ProtosynthError as exc:
        raise ProtosynthError(
            f"{P.text(mode)} needs the source corpus of this set, which stores no captions for it: {exc}"
        ) from None
    top = max(m for g in groups for m in g)
    if top >= corpus.n_pairs:
        raise ProtosynthError(f"{ds.root}: member index {top} is outside corpus {corpus.spec} ({corpus.n_pairs} pairs)")
    if mode != "members":
        of_image = pairs_of_images(corpus, {int(corpus.pair_image[m]) for g in groups for m in g})
        groups = [sorted({q for m in g for q in of_image[int(corpus.pair_image[m])]}) for g in groups]
    return [[(m, corpus.pair_caption[m]) for m in g] for g in groups]


def _member_texts(ds: DistilledSet, encoder: TextEncoder, normalise: bool, mode: str = "members") -> torch.Tensor:
    """Each pair's text as a mean of real captions: of its member pairs (``members``), of every caption
    of the images those members show (``image-captions``), or of every caption of the one image the
    pair shows (``image``: its start member's, its selected pair's, a coreset pair's own). The captions
    the set stores are read first; the source corpus only for a set made before they were stored.
    Both give the same encoder input (every distinct real pair once, in pair order), so the same
    features."""
    if mode == "image" and any(own_pair(p) is None for p in ds.pairs):
        raise ProtosynthError(
            f"{ds.root}: {P.text('image')} needs a start, selected or single member pair on every pair"
        )
    if mode != "image" and any(not p.get("members") for p in ds.pairs):
        raise ProtosynthError(f"{ds.root}: {P.text(mode)} needs member indices on every pair")
    groups = _stored_groups(ds, mode) or _corpus_groups(ds, mode)
    return _cached(encoder, ("groups", normalise, groups), lambda: _group_means(groups, encoder, normalise))


def _group_means(groups: list[list[tuple[int, str]]], encoder: TextEncoder, normalise: bool) -> torch.Tensor:
    caption = {m: c for g in groups for m, c in g}
    wanted = sorted(caption)
    feats = encode_texts(encoder, [caption[m] for m in wanted], normalise)
    row = {m: i for i, m in enumerate(wanted)}
    return torch.stack([feats[[row[m] for m, _ in g]].mean(0) for g in groups])


def _cacheable(encoder: TextEncoder) -> bool:
    """Named encoders only: a CLIP or a local folder can change its weights under the same spec."""
    return not encoder.spec.startswith("clip:") and not Path(encoder.spec.split(":", 1)[-1]).exists()


def _cached(encoder: TextEncoder, what: object, compute: Callable[[], torch.Tensor]) -> torch.Tensor:
    """``compute()``, kept on disk by the encoder and everything its input is made of (``what``): a
    set's members' means cost an encoding of most of the corpus's captions, and the same groups come
    back for every recipe, for the test stage after val, and for a selection beside the renders made
    from the same prototypes. The same input gives the same features, so a hit changes no score."""
    if not _cacheable(encoder):
        return compute()
    blob = json.dumps([encoder.spec, encoder.space, what], ensure_ascii=False, default=int).encode()
    path = cache_dir() / "protocol_text" / f"means-{hashlib.sha256(blob).hexdigest()[:32]}.npy"
    if path.is_file():
        return torch.from_numpy(np.load(path))
    feats = compute()
    check_cache_writable(path.parent)
    path.parent.mkdir(parents=True, exist_ok=True)
    with atomic_open(path) as fh:
        np.save(fh, feats.numpy())
    return feats


def image_hashes(corpus: Corpus) -> dict[bytes, int]:
    """Pixel digest -> image index, for the overlap check (``sets.texts.corpus_digests``: cached for a
    file corpus, so an evaluation does not decode the whole test split a second time)."""
    return {d: i for i, d in enumerate(corpus_digests(corpus))}


def check_no_overlap(ds: DistilledSet, test: Corpus, test_hashes: dict[bytes, int] | None = None) -> None:
    """Refuse a test split that shares an image with the set or with the real pairs it summarises."""
    corpus_spec = ds.manifest.get("corpus", {}).get("spec")
    if ds.manifest.get("corpus", {}).get("fingerprint") == test.fingerprint:
        raise ProtosynthError(f"{ds.root}: the test split {test.spec} is the corpus the set was made from")
    test_hashes = test_hashes if test_hashes is not None else image_hashes(test)
    for i in range(len(ds)):
        hit = test_hashes.get(image_digest(np.asarray(ds.image(i))))
        if hit is not None:
            raise ProtosynthError(f"{ds.root}: pair {i}'s image is test image {hit} of {test.spec}")
    members = sorted({m for p in ds.pairs for m in (p.get("members") or [])})
    if members and ds.member_images is not None:  # stored with the set: no corpus needed
        for key, digest in ds.member_images.get("images", []):
            hit = test_hashes.get(bytes.fromhex(digest))
            if hit is not None:
                raise ProtosynthError(
                    f"{ds.root}: member image {key} of {corpus_spec} is test image {hit} of {test.spec}"
                )
    elif members and corpus_spec:  # a set made before the digests were stored
        try:
            corpus = source_corpus(ds)
        except ProtosynthError as exc:
            raise ProtosynthError(
                f"the overlap check needs the source corpus of this set, which stores no member image digests: {exc}"
            ) from None
        for img in sorted({int(corpus.pair_image[m]) for m in members if m < corpus.n_pairs}):
            hit = test_hashes.get(image_digest(corpus.image_array(img)))
            if hit is not None:
                raise ProtosynthError(
                    f"{ds.root}: member image {corpus.image_keys[img]} of {corpus_spec} is test "
                    f"image {hit} of {test.spec}"
                )

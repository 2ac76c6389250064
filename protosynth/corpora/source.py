"""One corpus and how to read it (``CorpusSource``): the spec and the four reading options that every
config reading a corpus holds as its ``corpus``, and the way settings record them (flat, as always).
Light on purpose: the command line reads it for ``--help``."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, replace
from pathlib import Path

from ..util.options import CAPTION_COLUMN_HELP, CORPUS_HELP, IMAGE_COLUMN_HELP, IMAGE_ROOT_HELP, SKIP_BAD_HELP, opt


@dataclass(frozen=True)
class CorpusSource:
    """A corpus and how to read it: its spec and the four options every verb that reads a corpus
    shares. A config holds one as its ``corpus`` (a spec alone is taken for one with default options);
    its recorded settings spell the five out flat, as before (``flat_settings``)."""

    spec: str = opt("shapes", flag="corpus", help=CORPUS_HELP)
    # folder of a .json/.csv corpus's image paths (None: that file's folder)
    image_root: Path | None = opt(None, help=IMAGE_ROOT_HELP)
    skip_bad: bool = opt(False, help=SKIP_BAD_HELP)  # drop (and count) unreadable images instead of stopping
    # a .parquet or hf: corpus's image column (None: jpg / image) and caption column (None: caption)
    image_column: str | None = opt(None, help=IMAGE_COLUMN_HELP)
    caption_column: str | None = opt(None, help=CAPTION_COLUMN_HELP)

    def reading(self, spec: str) -> CorpusSource:
        """Another corpus read with these options (a held-out or test corpus)."""
        return replace(self, spec=spec)

    def options(self) -> dict:
        """The four reading options, as ``load_corpus`` takes them."""
        return {name: getattr(self, name) for name in READING}


READING = ("image_root", "skip_bad", "image_column", "caption_column")


@dataclass(frozen=True)
class CorpusReading:
    """The four reading options without a corpus: a config that reads corpora it names elsewhere
    holds one as its ``reading`` (``EvalConfig``, for its test and full corpora; ``BaselineConfig``,
    for its buffer's corpus, where a None and skip_bad False mean "as the buffer recorded"). Its
    recorded settings spell the four out flat (``flat_settings``)."""

    image_root: Path | None = opt(None, help=IMAGE_ROOT_HELP)
    skip_bad: bool = opt(False, help=SKIP_BAD_HELP)
    image_column: str | None = opt(None, help=IMAGE_COLUMN_HELP)
    caption_column: str | None = opt(None, help=CAPTION_COLUMN_HELP)

    def of(self, spec: str, **changes) -> CorpusSource:
        """Corpus ``spec`` read with these options, but for ``changes``."""
        return CorpusSource(spec, **{**self.options(), **changes})

    def options(self) -> dict:
        """The four reading options, as ``load_corpus`` takes them."""
        return {name: getattr(self, name) for name in READING}


def source(**helps: str):
    """A config's ``corpus`` field: a ``CorpusSource``, with the config's own help for some of its
    flags (``helps``: field name -> help)."""
    return dataclasses.field(default_factory=CorpusSource, metadata={"help": helps, "nested": True})


def as_source(corpus) -> CorpusSource:
    """A config's ``corpus`` as given: a ``CorpusSource``, or a spec read with the default options."""
    return corpus if isinstance(corpus, CorpusSource) else CorpusSource(corpus)


def reading_field(**helps: str):
    """A config's ``reading`` field: a ``CorpusReading``, with the config's own help for its flags
    (``helps``: field name -> help)."""
    return dataclasses.field(default_factory=CorpusReading, metadata={"help": helps, "nested": True})


class ReadsCorpus:
    """A config whose ``corpus`` is a ``CorpusSource``; given a spec alone, it is read with the default options."""

    def __post_init__(self) -> None:
        self.corpus = as_source(self.corpus)


def flat_settings(cfg) -> dict:
    """``asdict(cfg)`` with its corpus spelled out flat as settings and manifests have always recorded
    it: ``corpus`` (the spec) in its place, the four reading options last; a ``reading`` (the last
    field of the configs that hold one) likewise its four options last."""
    settings = dataclasses.asdict(cfg)
    corpus = settings.get("corpus")
    if isinstance(corpus, dict):
        settings["corpus"] = corpus.pop("spec")
        settings.update(corpus)
    options = settings.get("reading")
    if isinstance(options, dict):
        del settings["reading"]
        settings.update(options)
    return settings

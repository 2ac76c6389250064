"""Each option declared once: a config field carries its default and its help (``opt``), and a front
end (the command line in ``protosynth.cli``) derives its options from the fields.

Help names other parameters through ``protosynth.errors.P``, as error messages do, so that each front
end spells them its own way (the command line as flags). A field whose command-line flag is not its
name says so with ``flag=`` (``guidance_scale`` is ``--guidance``): the one place a rename is made.
This module imports neither typer nor the models: the command line reads it for ``--help``.
"""

from __future__ import annotations

import dataclasses
from typing import Any

from ..errors import P

NOT_SET: Any = dataclasses.MISSING


def opt(default: Any = NOT_SET, *, help: str | None = None, flag: str | None = None, factory: Any = NOT_SET):
    """A dataclass field with its default (or ``factory``), its help and, when the flag is not the
    field's name, its ``flag`` (without the dashes: ``"guidance"``)."""
    metadata = {"help": help, "flag": flag}
    return dataclasses.field(default=default, default_factory=factory, metadata=metadata)


def help_of(field: dataclasses.Field) -> str | None:
    """The help a field was declared with (None: none)."""
    return field.metadata.get("help")


def flag_name(field: dataclasses.Field) -> str:
    """The name a front end gives the field: its declared rename, else its own name."""
    return field.metadata.get("flag") or field.name


# The corpus options, shared by every verb that reads a corpus.
CORPUS_HELP = (
    "Corpus spec: shapes[:split][,n=..], a .jsonl manifest, a Karpathy/BLIP .json, a .csv (image,caption "
    "columns), webdataset .tar shards or .parquet files (a path or a glob such as 'shards/*.tar'), or a Hugging "
    "Face dataset: hf:NAME[:SPLIT] from the local datasets cache, or a save_to_disk folder."
)
IMAGE_ROOT_HELP = (
    "Folder the image paths of a Karpathy .json or a .csv corpus are relative to (default: that file's folder)."
)
SKIP_BAD_HELP = (
    "Decode every image once at load and skip missing or corrupt ones, and .tar samples without an image or "
    "a caption member (counted in the manifest), instead of stopping at the first; for .jsonl, .json, .csv "
    "and .tar corpora."
)
IMAGE_COLUMN_HELP = (
    "Image column of a .parquet or hf: corpus: encoded image bytes, or an Image() struct (default: jpg for "
    ".parquet, as img2dataset writes; image for hf:)."
)
CAPTION_COLUMN_HELP = "Caption column of a .parquet or hf: corpus: a string or a list of strings (default: caption)."
ALSO_TEST = f" Also for {P.test}."
EVAL_IMAGE_ROOT_HELP = f"Folder the image paths of a Karpathy .json or .csv {P.test} / {P.full} corpus are relative to."
EVAL_IMAGE_COLUMN_HELP = f"Image column of a .parquet or hf: {P.test} / {P.full} corpus (default: jpg / image)."
EVAL_CAPTION_COLUMN_HELP = f"Caption column of a .parquet or hf: {P.test} / {P.full} corpus (default: caption)."
EVAL_SKIP_BAD_HELP = (
    f"Skip (and count) unreadable images of the {P.full} corpus instead of stopping; never the test split's."
)
CLIP_ARCH_HELP = f"open_clip architecture of a checkpoint file given as {P.clip}."
CLIP_SPACE_HELP = (
    f"Embedding space of a {P.clip} checkpoint file or local-dir:DIR folder, e.g. ViT-L-14:openai for a "
    "copy of OpenAI's weights."
)

"""Build a small byte-level BPE merges file from a corpus's captions, in open_clip's format.

open_clip's ``SimpleTokenizer`` reads a gzipped merges list (first line a header). The default file
has 49k merges, which would make a small CLIP's token embedding larger than the rest of the model.
Here merges are learnt on the corpus's own frequent words (classic BPE), so frequent words become
single tokens while any other text still tokenises (it falls back to bytes), and the vocabulary
stays around a thousand entries.
"""

from __future__ import annotations

import gzip
from collections import Counter
from collections.abc import Iterable
from pathlib import Path

from open_clip.tokenizer import SimpleTokenizer, basic_clean, bytes_to_unicode, whitespace_clean

from ..util.files import atomic_open

BPE_FILENAME = "bpe_merges.txt.gz"


def learn_merges(counts: Counter[str], max_merges: int) -> list[tuple[str, str]]:
    """Classic BPE learning: repeatedly merge the most frequent adjacent pair (ties by name)."""
    enc = bytes_to_unicode()
    words: list[tuple[list[str], int]] = []
    for word, n in counts.items():
        symbols = [enc[b] for b in word.encode("utf-8")]
        symbols[-1] += "</w>"
        words.append((symbols, n))
    merges: list[tuple[str, str]] = []
    while len(merges) < max_merges:
        pairs: Counter[tuple[str, str]] = Counter()
        for symbols, n in words:
            for pair in zip(symbols, symbols[1:]):
                pairs[pair] += n
        if not pairs:
            break
        best = min(pairs, key=lambda p: (-pairs[p], p))
        if pairs[best] < 2:
            break
        merges.append(best)
        joined = best[0] + best[1]
        for symbols, _ in words:
            i = 0
            while i < len(symbols) - 1:
                if symbols[i] == best[0] and symbols[i + 1] == best[1]:
                    symbols[i : i + 2] = [joined]
                i += 1
    return merges


def build_bpe(captions: Iterable[str], out: Path, max_words: int = 3000, max_merges: int = 2000) -> Path:
    """Learn merges on the ``max_words`` most frequent words and write them gzipped."""
    tok = SimpleTokenizer()  # only for its word splitting pattern
    counts: Counter[str] = Counter()
    for caption in captions:
        text = whitespace_clean(basic_clean(caption)).lower()
        counts.update(tok.pat.findall(text))
    top = Counter(dict(sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:max_words]))
    merges = learn_merges(top, max_merges)
    out.parent.mkdir(parents=True, exist_ok=True)
    lines = ["#version: protosynth-bpe"] + [f"{a} {b}" for a, b in merges]
    # mtime=0: byte-identical files for equal input; filename: the gzip header names ``out``, not the temporary
    with atomic_open(out) as raw, gzip.GzipFile(filename=str(out), mode="wb", fileobj=raw, mtime=0) as fh:
        fh.write("\n".join(lines).encode("utf-8"))
    return out


def load_tokenizer(bpe_path: Path, context_length: int) -> SimpleTokenizer:
    return SimpleTokenizer(bpe_path=str(bpe_path), context_length=context_length)


def vocab_size(bpe_path: Path) -> int:
    """Vocabulary of a SimpleTokenizer on this file: 512 byte tokens + merges + 2 specials."""
    return len(load_tokenizer(bpe_path, 8).encoder)

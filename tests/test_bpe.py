"""The corpus BPE: frequent words become single tokens, anything still tokenises, files are stable."""

from __future__ import annotations

import gzip
from collections import Counter

import pytest

from protosynth.corpora.shapes import WorldConfig, generate_split
from protosynth.models.bpe import BPE_FILENAME, build_bpe, learn_merges, load_tokenizer, vocab_size


@pytest.fixture(scope="module")
def captions() -> list[str]:
    ws = generate_split(WorldConfig(n_test=50), "test")
    return [c for caps in ws.captions for c in caps]


@pytest.fixture(scope="module")
def bpe_file(captions, tmp_path_factory):
    return build_bpe(captions, tmp_path_factory.mktemp("bpe") / "sub" / BPE_FILENAME)


@pytest.fixture(scope="module")
def tok(bpe_file):
    return load_tokenizer(bpe_file, context_length=32)


def _merges(path) -> list[str]:
    with gzip.open(path, "rt", encoding="utf-8") as fh:
        return fh.read().split("\n")


def test_file_format(bpe_file):
    assert bpe_file.is_file() and bpe_file.name == BPE_FILENAME  # parent folder was created
    lines = _merges(bpe_file)
    assert lines[0].startswith("#version")
    merges = lines[1:]
    assert 50 < len(merges) <= 2000
    assert all(len(m.split(" ")) == 2 for m in merges)
    assert len(set(merges)) == len(merges)


def test_frequent_words_are_single_tokens(tok, captions):
    counts = Counter(w for c in captions for w in c.lower().replace(",", " ").replace(":", " ").split())
    frequent = [w for w, n in counts.items() if n >= 2]
    assert {"red", "circle", "triangle", "there", "left"} <= set(frequent)
    for word in frequent:
        ids = tok.encode(word)
        assert len(ids) == 1, (word, ids)
        assert tok.decoder[ids[0]] == word + "</w>"


def test_captions_tokenise_to_one_token_per_word(tok, captions):
    caption = captions[0]
    n_words = len(caption.replace(",", " , ").replace(":", " : ").split())
    assert len(tok.encode(caption)) == n_words


def test_rare_word_is_not_merged(tmp_path):
    path = build_bpe(["the cat sat", "the cat ran", "the cat sat", "a zyxwvq"], tmp_path / BPE_FILENAME)
    t = load_tokenizer(path, 16)
    assert len(t.encode("cat")) == 1
    assert len(t.encode("the cat sat")) == 3
    assert len(t.encode("zyxwvq")) == 6  # seen once: no pair reached a count of 2, so bytes


@pytest.mark.parametrize("text", ["zebra quokka", "xylophone", "naïve café ☃", "123 + 456 = 579!"])
def test_unseen_text_still_tokenises(tok, bpe_file, text):
    ids = tok.encode(text)
    assert len(ids) >= len(text.split())
    assert all(0 <= i < vocab_size(bpe_file) for i in ids)
    assert tok.decode(ids).replace(" ", "") == text.lower().replace(" ", "")


def test_unseen_word_needs_several_tokens(tok):
    assert len(tok.encode("xylophone")) > 1


def test_call_pads_to_context_length(tok, bpe_file):
    out = tok(["a red circle", "zebra " * 50])
    assert tuple(out.shape) == (2, 32)
    n = vocab_size(bpe_file)
    assert int(out.max()) < n
    sot, eot = tok.encoder["<start_of_text>"], tok.encoder["<end_of_text>"]
    assert out[0, :5].tolist() == [sot, tok.encode("a")[0], tok.encode("red")[0], tok.encode("circle")[0], eot]
    assert out[0, 5:].eq(0).all()
    assert int(out[1, -1]) == eot  # truncated long text still ends with end-of-text


def test_vocab_size_matches_tokenizer(tok, bpe_file):
    n_merges = len(_merges(bpe_file)) - 1
    assert vocab_size(bpe_file) == len(tok.encoder) == 512 + n_merges + 2
    # ids are contiguous: an embedding table of vocab_size rows covers every id
    assert sorted(tok.encoder.values()) == list(range(vocab_size(bpe_file)))
    assert vocab_size(bpe_file) < 5000  # far smaller than open_clip's 49k default


def test_equal_inputs_give_byte_identical_files(captions, bpe_file, tmp_path):
    again = build_bpe(list(captions), tmp_path / "other" / BPE_FILENAME)
    assert again.read_bytes() == bpe_file.read_bytes()
    # caption order does not matter either: merges depend on word counts only
    shuffled = build_bpe(list(reversed(captions)), tmp_path / "rev" / BPE_FILENAME)
    assert shuffled.read_bytes() == bpe_file.read_bytes()


def test_different_inputs_give_different_files(captions, bpe_file, tmp_path):
    other = build_bpe(captions + ["zebra zebra zebra"] * 3, tmp_path / BPE_FILENAME)
    assert other.read_bytes() != bpe_file.read_bytes()
    assert len(load_tokenizer(other, 8).encode("zebra")) == 1


def test_max_merges_and_max_words_limit_the_vocabulary(captions, tmp_path):
    small = build_bpe(captions, tmp_path / "a" / BPE_FILENAME, max_merges=10)
    assert len(_merges(small)) - 1 == 10
    assert vocab_size(small) == 512 + 10 + 2
    few_words = build_bpe(captions, tmp_path / "b" / BPE_FILENAME, max_words=3)
    assert len(_merges(few_words)) - 1 < 40


def test_learn_merges_classic_example():
    # "low" x5, "lower" x2, "newest" x6, "widest" x3 (Sennrich et al. style)
    counts = Counter({"low": 5, "lower": 2, "newest": 6, "widest": 3})
    merges = learn_merges(counts, 3)
    # most frequent pairs: ('e','s') 9, then ('es','t</w>') 9, then ('l','o') 7
    assert merges == [("e", "s"), ("es", "t</w>"), ("l", "o")]


def test_learn_merges_stops_when_no_pair_repeats():
    assert learn_merges(Counter({"ab": 1, "cd": 1}), 100) == []
    assert learn_merges(Counter({"ab": 2}), 100) == [("a", "b</w>")]

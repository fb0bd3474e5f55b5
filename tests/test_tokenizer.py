import json
import pathlib
from functools import lru_cache

import numpy as np
import pytest
import regex

from data.tokenizer import EOT, Tokenizer, from_gpt2_files, train_bpe

CORPUS = [
    "The quick brown fox jumps over the lazy dog. It's what they'll say, isn't it?\n",
    "def f(x):\n    return x ** 2  # square\n\n\nclass A:\n\tpass\r\n",
    "Ünïcödé wörds, naïve café, 東京は日本の首都です。 Привет, мир! 🙂🚀 ١٢٣\n",
    "    indented    with   many     spaces and 12345 67890 numbers\n",
] * 20
# A little real code: the json package's own sources.
CODE = [p.read_text(encoding="utf-8")
        for p in sorted(pathlib.Path(json.__file__).parent.glob("*.py"))]

NASTY = [
    "", " ", "  ", "\t", "\n", "\r\n", "\r", " \r\n \r\n", "a", " leading space", "trailing space ",
    "many     spaces    between", "\t\ttabs\tand\nnewlines\n\n", "你好，世界", "🤖🔥👩‍👩‍👧‍👦",
    "\u00e9 vs e\u0301 (composed vs decomposed)", "\u200b zero width \ufeff bom", "\x00\x01\x7f control",
    "mixed 日本 English 123 ١٢٣ 🙂", EOT, f"text{EOT}more", f"{EOT}{EOT}", "<|endoftext",
    "endoftext|>", "it's I'LL we've", "\U0010ffff max code point", "\\u1234 literal escape",
]


@pytest.fixture(scope="module")
def tok() -> Tokenizer:
    return train_bpe(CORPUS, vocab_size=600)


def random_strings(n: int, seed: int = 0) -> list[str]:
    """Random code points from ASCII, Latin, CJK, emoji and the whole range (no surrogates)."""
    rng = np.random.default_rng(seed)
    ranges = [(0x20, 0x7F), (0x00, 0x20), (0xA0, 0x250), (0x4E00, 0x9FFF), (0x1F300, 0x1FAFF),
              (0x0, 0xD7FF), (0xE000, 0x10FFFF)]
    out = []
    for _ in range(n):
        chars = []
        for _ in range(rng.integers(0, 40)):
            lo, hi = ranges[rng.integers(len(ranges))]
            chars.append(chr(int(rng.integers(lo, hi + 1))))
        out.append("".join(chars))
    return out


def test_round_trip_nasty_and_random(tok):
    for s in NASTY + random_strings(300):
        assert tok.decode(tok.encode(s)) == s, repr(s)


def test_encode_batch_matches_encode(tok):
    texts = NASTY + random_strings(50, seed=1)
    assert tok.encode_batch(texts) == [tok.encode(t) for t in texts]


def test_every_byte_is_known(tok):
    ids = tok.encode(bytes(range(256)).decode("latin-1"))
    assert all(0 <= i < tok.vocab_size for i in ids)
    assert tok.vocab_size <= 600


def test_eot_is_one_id(tok):
    ids = tok.encode(f"a{EOT}b")
    assert ids.count(tok.eot_id) == 1 and len(ids) == 3
    assert tok.token_id(EOT) == tok.eot_id
    assert tok.decode([tok.eot_id]) == EOT


def test_add_special_tokens(tok):
    before = tok.vocab_size
    specials = ["<|start|>", "<|delim é|>", "$", "<|extract|>"]
    ids = tok.add_special_tokens(specials)
    assert len(set(ids)) == 4
    assert tok.add_special_tokens(specials) == ids  # idempotent
    assert tok.vocab_size <= before + 4
    for t, i in zip(specials, ids):
        assert tok.encode(t) == [i]
    s = "<|start|>premise $ hypothesis<|delim é|>x<|extract|>"
    ids_s = tok.encode(s)
    assert [i for i in ids_s if i in ids] == [ids[0], ids[2], ids[1], ids[3]]
    assert tok.decode(ids_s) == s


def test_token_id_missing(tok):
    with pytest.raises(KeyError, match="not in the vocabulary"):
        tok.token_id("<|no such token|>")


def test_vocab_too_small():
    with pytest.raises(ValueError, match="256"):
        train_bpe(["abc"], vocab_size=100)


def test_save_load_identical(tok, tmp_path):
    tok.add_special_tokens(["<|sép|>"])
    tok.save(tmp_path / "tokenizer.json")
    assert [p.name for p in tmp_path.iterdir()] == ["tokenizer.json"]
    loaded = Tokenizer.load(tmp_path / "tokenizer.json")
    texts = NASTY + random_strings(50, seed=2) + ["a<|sép|>b"]
    assert loaded.encode_batch(texts) == tok.encode_batch(texts)
    assert loaded.vocab_size == tok.vocab_size and loaded.eot_id == tok.eot_id
    assert loaded.decode(loaded.encode("a<|sép|>b")) == "a<|sép|>b"


# --------------------------------------------------------------------------- GPT-2 files parity

GPT2_PATTERN = regex.compile(
    r"""'s|'t|'re|'ve|'m|'ll|'d| ?\p{L}+| ?\p{N}+| ?[^\s\p{L}\p{N}]+|\s+(?!\S)|\s+""")


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's map from bytes to printable characters."""
    keep = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1),
            *range(ord("®"), ord("ÿ") + 1)]
    table, extra = {}, 0
    for b in range(256):
        if b in keep:
            table[b] = chr(b)
        else:
            table[b] = chr(256 + extra)
            extra += 1
    return table


class ReferenceGPT2:
    """OpenAI's encoder.py algorithm: regex split, bytes -> chars, lowest-rank merge first."""

    def __init__(self, vocab: dict[str, int], merges: list[tuple[str, str]]):
        self.vocab, self.ranks = vocab, {m: r for r, m in enumerate(merges)}
        self.byte_char = bytes_to_unicode()
        self.bpe = lru_cache(maxsize=None)(self._bpe)

    def _bpe(self, word: str) -> tuple[str, ...]:
        parts = list(word)
        while len(parts) > 1:
            pair = min(zip(parts, parts[1:]), key=lambda p: self.ranks.get(p, float("inf")))
            if pair not in self.ranks:
                break
            merged, i = [], 0
            while i < len(parts):
                if i + 1 < len(parts) and (parts[i], parts[i + 1]) == pair:
                    merged.append(parts[i] + parts[i + 1])
                    i += 2
                else:
                    merged.append(parts[i])
                    i += 1
            parts = merged
        return tuple(parts)

    def encode(self, text: str) -> list[int]:
        ids = []
        for piece in GPT2_PATTERN.findall(text):
            word = "".join(self.byte_char[b] for b in piece.encode("utf-8"))
            ids += [self.vocab[t] for t in self.bpe(word)]
        return ids


@pytest.fixture(scope="module")
def gpt2_dir(tmp_path_factory):
    """A small vocab.json + merges.txt built the way GPT-2's were: 256 byte tokens in
    bytes_to_unicode order, then one token per merge, then <|endoftext|> last."""
    trained = json.loads(train_bpe(CORPUS + CODE, vocab_size=1500).to_str())["model"]["merges"]
    merges = [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in trained]
    tokens = list(bytes_to_unicode().values()) + [a + b for a, b in merges] + [EOT]
    vocab = {t: i for i, t in enumerate(dict.fromkeys(tokens))}
    d = tmp_path_factory.mktemp("gpt2")
    (d / "vocab.json").write_text(json.dumps(vocab, ensure_ascii=False), encoding="utf-8")
    (d / "merges.txt").write_text(
        "#version: 0.2\n" + "".join(f"{a} {b}\n" for a, b in merges), encoding="utf-8")
    return d, vocab, merges


PARITY = CORPUS[:4] + CODE[:2] + NASTY + [
    "Hello world", " Hello world", "aaaa aaaaa", "x = foo(bar, baz)  # comment\n",
    "The the THE tHe", "don't stop", "1234567890 3.14159", "   \n   \n\n\t x",
]


def test_gpt2_files_match_reference_encoder(gpt2_dir):
    d, vocab, merges = gpt2_dir
    ours, ref = from_gpt2_files(d / "vocab.json", d / "merges.txt"), ReferenceGPT2(vocab, merges)
    assert ours.eot_id == vocab[EOT] == len(vocab) - 1
    assert ours.vocab_size == len(vocab)
    for s in PARITY + random_strings(100, seed=3):
        if EOT in s:
            continue  # encoder.py has no notion of special tokens
        assert ours.encode(s) == ref.encode(s), repr(s)
        assert ours.decode(ours.encode(s)) == s


def test_gpt2_files_match_transformers(gpt2_dir):
    transformers = pytest.importorskip("transformers")
    d, _, _ = gpt2_dir
    ours = from_gpt2_files(d / "vocab.json", d / "merges.txt")
    hf = transformers.GPT2Tokenizer.from_pretrained(str(d))
    for s in PARITY + random_strings(30, seed=4):
        assert ours.encode(s) == hf.encode(s, add_special_tokens=False), repr(s)


# --------------------------------------------------------------------------- bytes as tokens


def test_byte_tokenizer_round_trip(tmp_path):
    """A token per byte, id = the byte's value, <|endoftext|> = 256, over GPT-2's byte map;
    data.tokenizer="bytes" selects it, and its saved file loads as the same tokenizer."""
    import ml_collections
    from data import text
    from data.tokenizer import byte_characters, byte_tokenizer
    tok = byte_tokenizer()
    assert (tok.vocab_size, tok.eot_id) == (257, 256)
    assert byte_characters() == [bytes_to_unicode()[b] for b in range(256)]
    for s in NASTY + random_strings(300, seed=3):
        ids = tok.encode(s)
        assert tok.decode(ids) == s, repr(s)
        if EOT not in s:
            assert ids == list(s.encode("utf-8")), repr(s)
    assert tok.encode(f"ab{EOT}\n") == [97, 98, 256, 10]
    tok.save(tmp_path / "tokenizer.json")
    loaded = text.load_tokenizer(tmp_path)
    texts = NASTY + random_strings(50, seed=4)
    assert loaded.encode_batch(texts) == tok.encode_batch(texts)
    chosen = text.get_tokenizer(ml_collections.ConfigDict(dict(tokenizer="bytes")))
    assert chosen.to_str() == tok.to_str()

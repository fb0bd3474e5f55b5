"""Byte-level BPE (GPT-2, CLIP), a thin wrapper of Hugging Face `tokenizers`.

GPT-2 maps every byte to a printable unicode character, splits text with its regex and runs BPE
over those characters. With all 256 byte characters in the vocabulary nothing is ever unknown, and
decoding maps the characters back to bytes, so `decode(encode(s)) == s` for every string.

byte_tokenizer() is the same machinery with no merges: a token per byte (id = the byte's value)
and the special tokens after them, a vocabulary of 257 that sees every letter of a word.

CLIP's BPE (Radford et al. 2021, section 2.4: "a lower-cased byte pair encoding with a 49,152
vocab size") is the same byte-level BPE on lower-cased text split by its own regex, every word
ending in "</w>"; its vocabulary is the 256 byte characters, those with "</w>", one entry per
merge and the start and end tokens. It is read from transformers' vocab.json + merges.txt (or
a tokenizer.json) or from open_clip's merges file (bpe_simple_vocab_16e6.txt.gz).
"""

from __future__ import annotations

import contextlib
import contextvars
import gzip
import os
import pathlib
import re
from collections.abc import Iterable, Sequence

import tokenizers
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers

EOT = "<|endoftext|>"
_LOADING = contextvars.ContextVar("tokenizer_loading", default=None)


@contextlib.contextmanager
def loading_only(missing):
    """Within it, train_bpe is a FileNotFoundError naming `missing` (the loaded run's
    tokenizer file): loading a run never trains a tokenizer, whatever the code it runs."""
    token = _LOADING.set(str(missing))
    try:
        yield
    finally:
        _LOADING.reset(token)


def _byte_level(tok: tokenizers.Tokenizer) -> tokenizers.Tokenizer:
    # GPT-2: no normaliser, its regex, no prefix space (it would not be reversible).
    tok.normalizer = None
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    return tok


class Tokenizer:
    """Thin wrapper of tokenizers.Tokenizer."""

    def __init__(self, tok: tokenizers.Tokenizer, eot: str = EOT, sot: str | None = None):
        self._tok = tok
        self._special_ids = {i for i, t in tok.get_added_tokens_decoder().items() if t.special}
        self.eot, self.sot = eot, sot
        self.add_special_tokens([eot] + ([sot] if sot else []))

    @property
    def vocab_size(self) -> int:
        return self._tok.get_vocab_size(with_added_tokens=True)

    @property
    def eot_id(self) -> int:
        return self.token_id(self.eot)

    @property
    def sot_id(self) -> int:
        if self.sot is None:
            raise KeyError("this tokenizer has no start-of-text token")
        return self.token_id(self.sot)

    def encode(self, text: str) -> list[int]:
        return self._tok.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        # Rust side, parallel over texts; no offsets are computed.
        encs = self._tok.encode_batch_fast(list(texts), add_special_tokens=False)
        return [e.ids for e in encs]

    def decode(self, ids) -> str:
        ids = [int(i) for i in ids]
        if self._special_ids.isdisjoint(ids):
            return self._tok.decode(ids, skip_special_tokens=False)
        # The byte-level decoder would remap the characters of a special token (e.g. "é") as if
        # they were bytes, so special tokens are written out verbatim between regular runs.
        out, run = [], []
        for i in ids:
            if i in self._special_ids:
                out.append(self._tok.decode(run, skip_special_tokens=False))
                out.append(self._tok.id_to_token(i))
                run = []
            else:
                run.append(i)
        out.append(self._tok.decode(run, skip_special_tokens=False))
        return "".join(out)

    def token_id(self, token: str) -> int:
        i = self._tok.token_to_id(token)
        if i is None:
            raise KeyError(f"token {token!r} is not in the vocabulary (size {self.vocab_size})")
        return i

    def add_special_tokens(self, tokens: Sequence[str]) -> list[int]:
        """Adds tokens that BPE never splits; returns their ids (existing ids are kept)."""
        # Idempotent in `tokenizers`: a token already present keeps its id.
        self._tok.add_special_tokens(
            [tokenizers.AddedToken(t, special=True, normalized=False) for t in tokens])
        ids = [self.token_id(t) for t in tokens]
        self._special_ids.update(ids)
        return ids

    def save(self, path) -> None:
        """Writes one tokenizer.json file (atomically, so readers never see half a file)."""
        path = os.fspath(path)
        tmp = f"{path}.tmp{os.getpid()}"
        self._tok.save(tmp)
        os.replace(tmp, path)

    def to_str(self) -> str:
        return self._tok.to_str()

    @classmethod
    def load(cls, path, **tokens) -> "Tokenizer":
        """A tokenizer.json (`tokens`: its eot and sot names, when not GPT-2's); a file that is
        not one is named in a ValueError."""
        path = os.fspath(path)
        try:
            tok = tokenizers.Tokenizer.from_file(path)
        except Exception as e:  # tokenizers raises a bare Exception with serde's message
            raise ValueError(f"{path} is not a tokenizer file (tokenizer.json of Hugging Face "
                             f"tokenizers): {e}") from e
        return cls(tok, **tokens)


def train_bpe(texts: Iterable[str], vocab_size: int,
              special_tokens: Sequence[str] = (EOT,)) -> Tokenizer:
    """Trains a GPT-2 style byte-level BPE with `vocab_size` entries, special tokens included."""
    if (missing := _LOADING.get()) is not None:
        raise FileNotFoundError(f"{missing} not found: loading a run never trains a tokenizer, "
                                "and a new one would not match its weights")
    special_tokens = list(dict.fromkeys([*special_tokens, EOT]))
    alphabet = pre_tokenizers.ByteLevel.alphabet()
    if vocab_size < len(alphabet) + len(special_tokens):
        raise ValueError(f"vocab_size {vocab_size} < 256 byte tokens + {len(special_tokens)} "
                         "special tokens")
    tok = _byte_level(tokenizers.Tokenizer(models.BPE()))
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=special_tokens,
                                  initial_alphabet=alphabet, show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    out = Tokenizer(tok)
    out.add_special_tokens(special_tokens)
    return out


BYTES = "bytes"   # data.tokenizer="bytes": byte_tokenizer() instead of a file or a trained BPE


def byte_characters() -> list[str]:
    """GPT-2's printable stand-in for each byte 0..255: a printable Latin-1 byte stands for
    itself, every other byte for the next code point from 256 on, in byte order."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("\u00a1"), ord("\u00ac") + 1),
                 *range(ord("\u00ae"), ord("\u00ff") + 1)]
    out, extra = [], 0
    for b in range(256):
        if b in printable:
            out.append(chr(b))
        else:
            out.append(chr(256 + extra))
            extra += 1
    return out


def byte_tokenizer(special_tokens: Sequence[str] = (EOT,)) -> Tokenizer:
    """Bytes as tokens: byte-level BPE without merges, token id = byte value, the special tokens
    from 256 on (<|endoftext|> = 256)."""
    vocab = {c: b for b, c in enumerate(byte_characters())}
    out = Tokenizer(_byte_level(tokenizers.Tokenizer(models.BPE(vocab, []))))
    out.add_special_tokens(list(dict.fromkeys([EOT, *special_tokens])))
    return out


def from_gpt2_files(vocab_json, merges_txt) -> Tokenizer:
    """GPT-2's released vocab.json + merges.txt, tokenising exactly as OpenAI's encoder.py."""
    try:
        vocab, merges = models.BPE.read_file(os.fspath(vocab_json), os.fspath(merges_txt))
    except Exception as e:  # a bare Exception from the Rust side
        raise ValueError(f"{vocab_json} and {merges_txt} are not a tokenizer (GPT-2's vocab.json "
                         f"+ merges.txt): {e}") from e
    bpe = models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="",
                     fuse_unk=False, dropout=None)
    return Tokenizer(_byte_level(tokenizers.Tokenizer(bpe)))


# --------------------------------------------------------------------------- CLIP
CLIP_SOT, CLIP_EOT = "<|startoftext|>", "<|endoftext|>"           # transformers' names
OPEN_CLIP_SOT, OPEN_CLIP_EOT = "<start_of_text>", "<end_of_text>"  # open_clip's
# Contractions, runs of letters, single digits, runs of other non-space characters.
CLIP_WORDS = r"""'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
CLIP_MERGES = 49152 - 256 - 2   # open_clip keeps the first 48,894 merges of its file


def vocabulary_byte_characters() -> list[str]:
    """byte_characters() in the order of GPT-2's and CLIP's vocabularies: bytes that print as
    themselves first (in byte order), then the others (chr(256 + k)): code-point order."""
    return sorted(byte_characters())


def _clip_pipeline(tok: tokenizers.Tokenizer, sot: str, eot: str) -> tokenizers.Tokenizer:
    """CLIP's text cleaning (whitespace runs to one space, lower case) and word split, then
    byte-level characters; the special tokens are kept whole."""
    tok.normalizer = normalizers.Sequence([
        normalizers.NFC(), normalizers.Replace(tokenizers.Regex(r"\s+"), " "),
        normalizers.Lowercase()])
    specials = "|".join(re.escape(t) for t in (sot, eot))
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(tokenizers.Regex(f"{specials}|{CLIP_WORDS}"), behavior="removed",
                             invert=True),
        pre_tokenizers.ByteLevel(add_prefix_space=False)])
    tok.decoder = decoders.ByteLevel()
    return tok


def clip_bpe(vocab: dict[str, int], merges: list[tuple[str, str]], sot: str = CLIP_SOT,
             eot: str = CLIP_EOT) -> Tokenizer:
    """CLIP's tokenizer from its vocabulary and merges (each word's last symbol ends in </w>)."""
    for t in (sot, eot):
        if t not in vocab:
            raise ValueError(f"the CLIP vocabulary has no {t!r} token")
    bpe = models.BPE(vocab, merges, continuing_subword_prefix="", end_of_word_suffix="</w>",
                     fuse_unk=False, unk_token=eot, dropout=None)
    return Tokenizer(_clip_pipeline(tokenizers.Tokenizer(bpe), sot, eot), eot=eot, sot=sot)


def from_clip_files(path) -> Tokenizer:
    """The CLIP tokenizer of a transformers directory: vocab.json + merges.txt, else
    tokenizer.json (CLIPTokenizer's files; start and end tokens <|startoftext|>,
    <|endoftext|>)."""
    path = pathlib.Path(path)
    vocab_json, merges_txt = path / "vocab.json", path / "merges.txt"
    if vocab_json.exists() and merges_txt.exists():
        try:
            vocab, merges = models.BPE.read_file(os.fspath(vocab_json), os.fspath(merges_txt))
        except Exception as e:  # a bare Exception from the Rust side
            raise ValueError(f"{vocab_json} and {merges_txt} are not a CLIP tokenizer: {e}") from e
        return clip_bpe(vocab, merges)
    if (path / "tokenizer.json").exists():
        # start and end tokens: data.images.tokenize adds them (encode never does)
        return Tokenizer.load(path / "tokenizer.json", eot=CLIP_EOT, sot=CLIP_SOT)
    raise FileNotFoundError(f"{path} has no CLIP tokenizer (vocab.json + merges.txt, or "
                            "tokenizer.json)")


def from_open_clip_vocab(bpe_path, vocab_size: int = CLIP_MERGES + 512 + 2) -> Tokenizer:
    """open_clip's tokenizer from its merges file (gzip or plain text, a header line, then one
    merge per line): the first vocab_size - 514 merges, ids in open_clip's order, start and end
    tokens <start_of_text>, <end_of_text> last."""
    bpe_path = pathlib.Path(bpe_path)
    if not bpe_path.exists():
        raise FileNotFoundError(f"{bpe_path} not found: expected open_clip's BPE merges file "
                                "(bpe_simple_vocab_16e6.txt.gz)")
    raw = bpe_path.read_bytes()
    text = (gzip.decompress(raw) if raw[:2] == b"\x1f\x8b" else raw).decode("utf-8")
    lines = text.split("\n")[1:vocab_size - 512 - 2 + 1]
    merges = [tuple(line.split()) for line in lines if line.strip()]
    bad = [m for m in merges if len(m) != 2]
    if bad:
        raise ValueError(f"{bpe_path}: a merge line must hold two symbols, got {bad[0]}")
    chars = vocabulary_byte_characters()
    tokens = [*chars, *(c + "</w>" for c in chars), *("".join(m) for m in merges),
              OPEN_CLIP_SOT, OPEN_CLIP_EOT]
    return clip_bpe({t: i for i, t in enumerate(tokens)}, merges, OPEN_CLIP_SOT, OPEN_CLIP_EOT)

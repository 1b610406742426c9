"""Tokenizers rebuilt from a GGUF file's metadata with PyPI ``tokenizers`` - byte-level BPE
(``tokenizer.ggml.model == "gpt2"``, SmolLM2) or SentencePiece BPE with scores and byte fallback
(``"llama"``, Gemma 3) - or a Hugging Face ``tokenizer.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Tokenizer", "from_gguf", "from_file", "EncoderTokenizer", "encoder_from_file"]

# llama.cpp pre-tokenizer names -> (split digits individually?)
_PRE = {"smollm": True, "gpt2": False, "default": False}


class Tokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` with the model's BOS/EOS ids.

    ``encode`` never adds BOS (perplexity is measured on exactly the tokens of the text); pass
    ``bos=True`` to add it.  ``add_bos`` records whether the model expects a BOS at the start of a
    prompt (GGUF ``tokenizer.ggml.add_bos_token``; Gemma does), which :class:`Sampler` follows.
    """

    def __init__(self, tk: Any, bos_id: int | None, eos_id: int | None,
                 add_bos: bool = False) -> None:
        self.tk = tk
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.add_bos = bool(add_bos) and bos_id is not None

    @property
    def vocab_size(self) -> int:
        return self.tk.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str, bos: bool = False) -> list[int]:
        ids = self.tk.encode(text, add_special_tokens=False).ids
        return ([self.bos_id] if bos and self.bos_id is not None else []) + list(ids)

    def encode_batch(self, texts: list[str]) -> list[list[int]]:
        return [list(e.ids) for e in self.tk.encode_batch(texts, add_special_tokens=False)]

    def decode(self, ids: Any, skip_special: bool = False) -> str:
        return self.tk.decode([int(i) for i in np.asarray(ids).reshape(-1)],
                              skip_special_tokens=skip_special)


def from_gguf(reader: Any) -> Tokenizer:
    """Build the tokenizer stored in a GGUF file (``tokenizer.ggml.model == "gpt2"``: byte-level
    BPE; special tokens are the CONTROL-type tokens)."""
    from tokenizers import AddedToken, decoders, models, pre_tokenizers
    from tokenizers import Tokenizer as HFTokenizer

    def field(key: str, default: Any = None) -> Any:
        f = reader.fields.get(key)
        return default if f is None else f.contents()

    kind = field("tokenizer.ggml.model")
    if kind == "llama":
        return _sentencepiece_from_gguf(field)
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (supported: 'gpt2' "
                         "byte-level BPE, 'llama' SentencePiece)")
    tokens = field("tokenizer.ggml.tokens")
    merges = [tuple(m.split(" ", 1)) for m in (field("tokenizer.ggml.merges") or [])]
    types = field("tokenizer.ggml.token_type", [1] * len(tokens))
    vocab = {t: i for i, t in enumerate(tokens)}
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    pre = field("tokenizer.ggml.pre", "default")
    seq = [pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)]
    if _PRE.get(pre, False):
        seq.insert(0, pre_tokenizers.Digits(individual_digits=True))
    tk.pre_tokenizer = pre_tokenizers.Sequence(seq)
    tk.decoder = decoders.ByteLevel()
    special = [AddedToken(t, special=True, normalized=False)
               for t, ty in zip(tokens, types) if int(ty) == 3]
    tk.add_special_tokens(special)
    return Tokenizer(tk, field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id"),
                     field("tokenizer.ggml.add_bos_token", False))


def _sentencepiece_from_gguf(field: Any) -> Tokenizer:
    """A SentencePiece BPE vocabulary (pieces, scores, token types) as a ``tokenizers`` BPE.

    SentencePiece BPE merges, anywhere in the text, the adjacent pair whose concatenation is the
    highest-scoring piece (leftmost first on ties), and falls back to ``<0xNN>`` byte pieces for
    characters outside the vocabulary.  A BPE whose merge list holds every split of every piece
    into two pieces, ranked by the score of the merged piece, does the same.  Spaces become
    ``U+2581`` (no prefix space is added unless ``add_space_prefix``); CONTROL pieces (type 3)
    are special tokens, USER_DEFINED pieces (type 4, e.g. runs of newlines) are matched whole
    before the merges, as llama.cpp does.
    """
    from tokenizers import AddedToken, Regex, decoders, models, normalizers
    from tokenizers import Tokenizer as HFTokenizer

    tokens = list(field("tokenizer.ggml.tokens"))
    scores = [float(v) for v in field("tokenizer.ggml.scores")]
    types = [int(v) for v in field("tokenizer.ggml.token_type", [1] * len(tokens))]
    vocab = {t: i for i, t in enumerate(tokens)}
    candidates = []
    for i, piece in enumerate(tokens):
        if types[i] != 1 or len(piece) < 2:  # only normal pieces are reached by merges
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                candidates.append((-scores[i], i, vocab[left], left, right))
    candidates.sort()
    merges = [(c[3], c[4]) for c in candidates]
    unk = field("tokenizer.ggml.unknown_token_id")
    tk = HFTokenizer(models.BPE(vocab=vocab, merges=merges, unk_token=None if unk is None
                                else tokens[unk], byte_fallback=True, fuse_unk=True))
    norm = [normalizers.Replace(" ", "\u2581")]
    if field("tokenizer.ggml.add_space_prefix", True):
        norm.insert(0, normalizers.Prepend("\u2581"))
    tk.normalizer = normalizers.Sequence(norm)
    dec = [decoders.Replace("\u2581", " "), decoders.ByteFallback(), decoders.Fuse()]
    if field("tokenizer.ggml.add_space_prefix", True):
        dec.append(decoders.Strip(" ", 1, 0))
    tk.decoder = decoders.Sequence(dec)
    tk.add_tokens([AddedToken(t, special=False, normalized=False)
                   for t, ty in zip(tokens, types) if ty == 4])
    tk.add_special_tokens([AddedToken(t, special=True, normalized=False)
                           for t, ty in zip(tokens, types) if ty == 3])
    return Tokenizer(tk, field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id"),
                     field("tokenizer.ggml.add_bos_token", False))


def from_file(path: str | Path, bos_id: int | None = None, eos_id: int | None = None) -> Tokenizer:
    """Load a Hugging Face ``tokenizer.json`` (padding and truncation turned off).  The prompt
    BOS convention (``add_bos``) is read off the file's post-processor: whether encoding with
    special tokens starts with ``bos_id``."""
    from tokenizers import Tokenizer as HFTokenizer

    tk = HFTokenizer.from_file(str(path))
    tk.no_padding()
    tk.no_truncation()
    with_special = tk.encode("a", add_special_tokens=True).ids
    add_bos = bos_id is not None and bool(with_special) and with_special[0] == bos_id
    return Tokenizer(tk, bos_id, eos_id, add_bos)


class EncoderTokenizer(Tokenizer):
    """The WordPiece tokenizer of a BERT encoder (``tokenizer.json``, padding and truncation off).

    ``encode`` adds ``[CLS] ... [SEP]`` (the file's post-processor) unless ``special=False``.
    """

    def __init__(self, tk: Any, cls_id: int | None, sep_id: int | None, pad_id: int = 0) -> None:
        super().__init__(tk, cls_id, sep_id)
        self.pad_id = pad_id

    def encode(self, text: str, special: bool = True) -> list[int]:  # type: ignore[override]
        return list(self.tk.encode(text, add_special_tokens=special).ids)

    def encode_batch(self, texts: list[str], special: bool = True) -> list[list[int]]:  # type: ignore[override]
        return [list(e.ids) for e in self.tk.encode_batch(texts, add_special_tokens=special)]


def encoder_from_file(path: str | Path) -> EncoderTokenizer:
    """A BERT ``tokenizer.json`` as an :class:`EncoderTokenizer` (``[CLS]``/``[SEP]``/``[PAD]``
    ids from its vocabulary)."""
    tok = from_file(path)
    tk = tok.tk
    pad = tk.token_to_id("[PAD]")
    return EncoderTokenizer(tk, tk.token_to_id("[CLS]"), tk.token_to_id("[SEP]"),
                            0 if pad is None else pad)

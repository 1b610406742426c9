"""Tokenizers: byte-level BPE rebuilt from a GGUF file's metadata (PyPI ``tokenizers``), or a
Hugging Face ``tokenizer.json``."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["Tokenizer", "from_gguf", "from_file", "EncoderTokenizer", "encoder_from_file"]

# llama.cpp pre-tokenizer names -> (split digits individually?)
_PRE = {"smollm": True, "gpt2": False, "default": False}


class Tokenizer:
    """A thin wrapper over a ``tokenizers.Tokenizer`` with the model's BOS/EOS ids.

    ``encode`` never adds BOS (perplexity is measured without one); pass ``bos=True`` to add it.
    """

    def __init__(self, tk: Any, bos_id: int | None, eos_id: int | None) -> None:
        self.tk = tk
        self.bos_id = bos_id
        self.eos_id = eos_id

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
    if kind != "gpt2":
        raise ValueError(f"GGUF tokenizer model {kind!r} is not supported (only byte-level BPE 'gpt2')")
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
    return Tokenizer(tk, field("tokenizer.ggml.bos_token_id"), field("tokenizer.ggml.eos_token_id"))


def from_file(path: str | Path, bos_id: int | None = None, eos_id: int | None = None) -> Tokenizer:
    """Load a Hugging Face ``tokenizer.json`` (padding and truncation turned off)."""
    from tokenizers import Tokenizer as HFTokenizer

    tk = HFTokenizer.from_file(str(path))
    tk.no_padding()
    tk.no_truncation()
    return Tokenizer(tk, bos_id, eos_id)


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

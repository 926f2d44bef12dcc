"""Tokenizers with one small interface: Gemma's SentencePiece-BPE and a byte-level one.

``Tokenizer`` wraps a ``tokenizers.Tokenizer``. For a GGUF checkpoint it is rebuilt from
the file's vocabulary the way transformers' GGUF loader does it (Gemma's GGUF lists no
merges: they are derived from the vocabulary in file order), so ids match transformers
exactly. ``encode`` never adds BOS: prompts are built segment by segment and the caller
places BOS once (``calrec_core.template.encode_example``).
"""

from __future__ import annotations

import json
import pathlib
from collections.abc import Sequence

from tokenizers import AddedToken, decoders, models, normalizers, pre_tokenizers
from tokenizers import Tokenizer as BackendTokenizer

SPIECE_SPACE = "\u2581"
_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types.
_SPECIAL_FILE = "special_tokens.json"


class Tokenizer:
    """Text <-> ids; ``encode`` adds no BOS. Special ids: bos_id, eos_id, pad_id."""

    def __init__(self, backend: BackendTokenizer, *, bos_id: int, eos_id: int, pad_id: int):
        self.backend = backend
        self.bos_id = bos_id
        self.eos_id = eos_id
        self.pad_id = pad_id
        self.vocab_size = backend.get_vocab_size(with_added_tokens=True)
        vocab = backend.get_vocab(with_added_tokens=True)
        # Tokens that write a line break (the sampler may stop on them).
        self.newline_ids = frozenset(
            i for token, i in vocab.items() if "\n" in token or token == "<0x0A>"
        )

    def encode(self, text: str) -> list[int]:
        return self.backend.encode(text, add_special_tokens=False).ids

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        encodings = self.backend.encode_batch(list(texts), add_special_tokens=False)
        return [encoding.ids for encoding in encodings]

    def decode(self, ids: Sequence[int]) -> str:
        """Text of ``ids`` with special tokens (BOS, EOS, padding) left out."""
        return self.backend.decode([int(i) for i in ids], skip_special_tokens=True)

    def save(self, directory: str | pathlib.Path) -> None:
        """Writes tokenizer.json and the special ids into ``directory`` (local or gs://)."""
        from calrec_core import storage

        special = {"bos_id": self.bos_id, "eos_id": self.eos_id, "pad_id": self.pad_id}
        with storage.staged_output(directory) as folder:
            self.backend.save(str(folder / "tokenizer.json"))
            (folder / _SPECIAL_FILE).write_text(json.dumps(special))

    @classmethod
    def load(cls, directory: str | pathlib.Path) -> Tokenizer:
        """Loads what ``save`` wrote (local or gs://)."""
        from calrec_core import storage

        with storage.local_dir(directory) as folder:
            special = json.loads((folder / _SPECIAL_FILE).read_text())
            return cls(BackendTokenizer.from_file(str(folder / "tokenizer.json")), **special)


def derive_merges(tokens: Sequence[str]) -> list[tuple[str, str]]:
    """BPE merges implied by a vocabulary ordered best-first (transformers' generate_merges).

    Every split of a token into two vocabulary pieces is a merge ranked by the token's
    position; splits of one token rank longer left pieces first.
    """
    vocab = {token: index for index, token in enumerate(tokens)}
    scores = {token: -index for index, token in enumerate(tokens)}
    merges = []
    for token, score in scores.items():
        local = []
        for cut in range(1, len(token)):
            left, right = token[:cut], token[cut:]
            if left in vocab and right in vocab:
                local.append((left, right, score))
        local.sort(key=lambda m: (vocab[m[0]], vocab[m[1]]))
        merges.extend(local)
    merges.sort(key=lambda m: (m[2], len(m[0]), len(m[1])), reverse=True)
    return [(left, right) for left, right, _ in merges]


def sentencepiece_bpe_from_vocab(
    tokens: Sequence[str],
    token_types: Sequence[int],
    *,
    bos_id: int,
    eos_id: int,
    pad_id: int,
    unk_id: int,
) -> Tokenizer:
    """Gemma's tokenizer from a GGUF's ``tokenizer.ggml.*`` vocabulary (model 'llama')."""
    if len(tokens) != len(token_types):
        raise ValueError(f"{len(tokens)} tokens but {len(token_types)} token types")
    # Runs of spaces are stored as real spaces but looked up as U+2581 after normalising.
    respelled = [SPIECE_SPACE * len(t) if " " in t and not t.strip() else t for t in tokens]
    vocab = {token: index for index, token in enumerate(respelled)}
    bpe = models.BPE(
        vocab=vocab,
        merges=derive_merges(respelled),
        fuse_unk=True,
        unk_token=tokens[unk_id],
        dropout=None,
        byte_fallback=True,
    )
    backend = BackendTokenizer(bpe)
    backend.normalizer = normalizers.Replace(" ", SPIECE_SPACE)
    backend.pre_tokenizer = pre_tokenizers.Split(
        pattern=" ", behavior="merged_with_previous", invert=False
    )
    backend.decoder = decoders.Sequence(
        [decoders.Replace(SPIECE_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    )
    special = {tokens[i] for i in (pad_id, eos_id, bos_id, unk_id)}
    special |= {t for t, kind in zip(tokens, token_types, strict=True) if kind == _CONTROL}
    backend.add_special_tokens(
        [AddedToken(t, normalized=False, special=True) for t in tokens if t in special]
    )
    # User-defined pieces (newline runs, HTML tags) are always matched whole, as llama.cpp does.
    backend.add_tokens(
        [
            AddedToken(t, normalized=False, special=False)
            for t, kind in zip(tokens, token_types, strict=True)
            if kind == _USER_DEFINED and t in vocab
        ]
    )
    return Tokenizer(backend, bos_id=bos_id, eos_id=eos_id, pad_id=pad_id)


class ByteTokenizer:
    """UTF-8 bytes as ids (after 4 specials), for random-init test models of small vocab."""

    pad_id, eos_id, bos_id, unk_id = 0, 1, 2, 3
    _OFFSET = 4
    _NEWLINE = ord("\n") + _OFFSET

    def __init__(self, vocab_size: int = 512):
        if vocab_size < 256 + self._OFFSET:
            raise ValueError(f"a byte tokenizer needs vocab_size >= 260, got {vocab_size}")
        self.vocab_size = vocab_size
        self.newline_ids = frozenset({self._NEWLINE})

    def encode(self, text: str) -> list[int]:
        return [b + self._OFFSET for b in text.encode("utf-8")]

    def encode_batch(self, texts: Sequence[str]) -> list[list[int]]:
        return [self.encode(text) for text in texts]

    def decode(self, ids: Sequence[int]) -> str:
        data = bytes(int(i) - self._OFFSET for i in ids if self._OFFSET <= i < 256 + self._OFFSET)
        return data.decode("utf-8", errors="replace")


def make_tiny_tokenizer(vocab_size: int = 512) -> ByteTokenizer:
    """The tokenizer that goes with ``Gemma3Config.tiny()`` (and ``demo()``)."""
    return ByteTokenizer(vocab_size)

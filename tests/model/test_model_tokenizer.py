"""Tokenizers without the real checkpoint: byte-level, merge derivation, save/load, CLI."""

from __future__ import annotations

import json

import pytest

from calrec_core.cli import main
from calrec_core.model import ByteTokenizer, Tokenizer, make_tiny_tokenizer
from calrec_core.model.tokenizer import derive_merges, sentencepiece_bpe_from_vocab

NORMAL, CONTROL, USER_DEFINED, BYTE = 1, 3, 4, 6


def _toy_vocab():
    """A Gemma-shaped toy vocabulary: specials, newline runs, byte pieces, then BPE pieces."""
    tokens = ["<pad>", "<eos>", "<bos>", "<unk>", "<mask>", "\n", "\n\n", "  "]
    types = [CONTROL] * 5 + [USER_DEFINED] * 3
    tokens += [f"<0x{b:02X}>" for b in range(256)]
    types += [BYTE] * 256
    pieces = [
        "▁",
        "T",
        "i",
        "t",
        "l",
        "e",
        ":",
        "▁T",
        "it",
        "le",
        "Tit",
        "Title",
        "▁Title",
        "a",
        "b",
        "▁a",
        "ab",
        ".",
        "▁▁",
    ]
    tokens += pieces
    types += [NORMAL] * len(pieces)
    return tokens, types


def test_byte_tokenizer_round_trips_unicode():
    tokenizer = make_tiny_tokenizer(512)
    text = "Title: Café – 5€.\n\nNext"
    ids = tokenizer.encode(text)
    assert all(4 <= i < 260 for i in ids) and tokenizer.decode(ids) == text
    assert tokenizer.decode([tokenizer.bos_id] + ids + [tokenizer.eos_id]) == text
    assert tokenizer.encode("\n")[0] in tokenizer.newline_ids
    with pytest.raises(ValueError):
        ByteTokenizer(100)


def test_derived_merges_equal_transformers_generate_merges():
    from transformers.tokenization_utils_base import generate_merges

    tokens, _ = _toy_vocab()
    vocab = {t: i for i, t in enumerate(tokens)}
    expected = generate_merges(vocab, {t: -i for i, t in enumerate(tokens)})
    assert derive_merges(tokens) == expected
    assert ("▁", "Title") in derive_merges(tokens)


def test_sentencepiece_tokenizer_from_vocab(tmp_path):
    tokens, types = _toy_vocab()
    tokenizer = sentencepiece_bpe_from_vocab(tokens, types, bos_id=2, eos_id=1, pad_id=0, unk_id=3)
    ids = tokenizer.encode("Title: ab\n\nTitle")
    pieces = [tokens[i] for i in ids]
    assert pieces == ["Title", ":", "▁a", "b", "\n\n", "Title"]  # "▁a" outranks "ab".
    assert tokenizer.decode(ids) == "Title: ab\n\nTitle"
    # A character outside the vocabulary falls back to its UTF-8 bytes.
    assert [tokens[i] for i in tokenizer.encode("é")] == ["<0xC3>", "<0xA9>"]
    assert tokenizer.encode("<bos>") == [2]  # Control tokens match whole.
    assert tokenizer.decode([2, *ids, 1]) == "Title: ab\n\nTitle"
    assert {tokens.index("\n"), tokens.index("\n\n")} <= tokenizer.newline_ids
    tokenizer.save(tmp_path)
    again = Tokenizer.load(tmp_path)
    assert again.encode("Title: ab  a.") == tokenizer.encode("Title: ab  a.")
    assert (again.bos_id, again.eos_id, again.pad_id) == (2, 1, 0)
    with pytest.raises(ValueError):
        sentencepiece_bpe_from_vocab(tokens, types[:-1], bos_id=2, eos_id=1, pad_id=0, unk_id=3)


def test_cli_prepare_converts_a_checkpoint(tiny_reference, tmp_path, capsys):
    _, directory = tiny_reference
    assert main(["model", "prepare", "--source", str(directory), "--cache-dir", str(tmp_path)]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["config"]["num_layers"] == 4 and printed["config"]["sliding_window"] == 8
    assert (tmp_path / printed["cache"].split("/")[-1] / "complete.json").exists()

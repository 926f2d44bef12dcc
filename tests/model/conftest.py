"""Fixtures for the model tests: tiny random models, ours and transformers' reference."""

from __future__ import annotations

import json
import types

import pytest


def tiny_hf_config(**overrides):
    """A tiny transformers Gemma 3 config: 4 layers (last global), window 8, GQA 4:2."""
    from transformers import Gemma3TextConfig

    fields = dict(
        vocab_size=512,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=16,
        query_pre_attn_scalar=16,
        sliding_window=8,
        layer_types=["sliding_attention"] * 3 + ["full_attention"],
        max_position_embeddings=512,
        attn_implementation="eager",
    )
    fields.update(overrides)
    return Gemma3TextConfig(**fields)


def random_hf_model(config, seed: int = 0):
    """transformers' Gemma3ForCausalLM with random weights, norms included (HF inits them 0)."""
    import torch
    from transformers import Gemma3ForCausalLM

    torch.manual_seed(seed)
    model = Gemma3ForCausalLM(config).eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if name.endswith("norm.weight"):
                param.normal_(0.0, 0.3)
    return model


def save_hf_checkpoint(model, directory, dtype=None) -> None:
    """Writes a HF checkpoint directory with a word-level tokenizer.json beside it."""
    from tokenizers import Tokenizer, models

    if dtype is not None:
        model = model.to(dtype)
    model.save_pretrained(directory)
    vocab = {"<pad>": 0, "<eos>": 1, "<bos>": 2, "<unk>": 3}
    vocab.update({f"w{i}": i for i in range(4, model.config.vocab_size)})
    Tokenizer(models.WordLevel(vocab, unk_token="<unk>")).save(str(directory / "tokenizer.json"))
    json.loads((directory / "config.json").read_text())  # Written and readable.


@pytest.fixture(scope="session")
def hf_tools():
    """The helpers above, for test modules (test files cannot import each other here)."""
    return types.SimpleNamespace(
        config=tiny_hf_config, random_model=random_hf_model, save=save_hf_checkpoint
    )


@pytest.fixture(scope="module")
def tiny_reference(tmp_path_factory):
    """(transformers model, checkpoint dir) for the default tiny config."""
    model = random_hf_model(tiny_hf_config())
    directory = tmp_path_factory.mktemp("tiny_hf")
    save_hf_checkpoint(model, directory)
    return model, directory

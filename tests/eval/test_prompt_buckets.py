"""Evaluation's decode programs: one prompt count and at most three prompt lengths, whatever
the users (the last, smaller user batch included)."""

from __future__ import annotations

import numpy as np
from flax import nnx

from calrec_core.eval.config import EvalConfig
from calrec_core.eval.generation import ItemGenerator
from calrec_core.model import decoding
from calrec_core.model.decoding import prompt_buckets


def test_prompt_buckets_are_at_most_three_and_cover_the_budget():
    assert prompt_buckets(512, 256) == (256, 512)
    assert prompt_buckets(1024, 256) == (512, 768, 1024)
    assert prompt_buckets(1024, 64) == (384, 704, 1024)
    for budget in range(8, 2000, 37):
        for bucket in (1, 16, 64, 256):
            lengths = prompt_buckets(budget, bucket)
            assert 1 <= len(lengths) <= 3 and lengths[-1] >= budget
            assert all(n % bucket == 0 for n in lengths)


def test_an_evaluation_compiles_at_most_three_decode_programs(monkeypatch):
    from calrec_core.model import Gemma3, Gemma3Config
    from calrec_core.model.tokenizer import make_tiny_tokenizer

    shapes = []
    real_decode = decoding._decode

    def spy(model, tokens, *args, **kwargs):
        shapes.append((tokens.shape, kwargs["num_samples"], kwargs["budget"]))
        return real_decode(model, tokens, *args, **kwargs)

    monkeypatch.setattr(decoding, "_decode", spy)
    model = Gemma3(Gemma3Config.tiny(vocab_size=512), rngs=nnx.Rngs(0))
    config = EvalConfig.tiny()  # 3 users a batch, prompts of up to 256 tokens
    generator = ItemGenerator(model, make_tiny_tokenizer(512), config)
    rng = np.random.default_rng(0)
    words = [f"w{i}" for i in range(40)]
    histories = [[" ".join(rng.choice(words, int(rng.integers(1, 8)))) for _ in range(n)]
                 for n in rng.integers(1, 6, 11)]
    for start in range(0, len(histories), config.user_batch_size):  # 3, 3, 3, 2 users
        generator.sample(histories[start : start + config.user_batch_size], "calrec", seed=0)
    lengths = {shape[0][1] for shape in shapes}
    assert len(set(shapes)) <= 3 and len(lengths) >= 2, shapes
    assert {shape[0][0] for shape in shapes} == {config.user_batch_size}

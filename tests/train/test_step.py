"""The training step on the tiny model: padding never matters, ablation skips the item tower,
bfloat16 compute keeps float32 master weights, the step lowers the loss on a fixed batch."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from calrec_core.model import Gemma3, Gemma3Config, make_mesh, make_tiny_tokenizer
from calrec_core.train.batching import ExampleEncoder, collate, split_microbatches
from calrec_core.train.config import TrainConfig
from calrec_core.train.step import Trainer, loss_terms

HISTORIES = [
    (["Title: Red mug. Category: Kitchen. Brand: Acme. Price: $5.00."],
     "Title: Blue mug. Category: Kitchen. Brand: Acme. Price: $6.00."),
    (["Title: Gift card. Category: Gift Cards. Brand: Unknown. Price: Unknown.",
      "Title: Pizza card. Category: Gift Cards. Brand: Dominos. Price: $25.00."],
     "Title: Coffee card. Category: Gift Cards. Brand: Unknown. Price: $10.00."),
    (["Title: Wired magazine. Category: Magazines. Brand: Conde. Price: Unknown."],
     "Title: Vogue. Category: Magazines. Brand: Conde. Price: Unknown."),
    (["Title: Tea. Category: Grocery. Brand: Lipton. Price: $3.00."],
     "Title: Green tea. Category: Grocery. Brand: Lipton. Price: $4.00."),
]
CONFIG = TrainConfig.tiny().replace(batch_size=4, microbatches=1, max_input_len=160,
                                    max_target_len=80)


def _batch(seq_len=256):
    tokenizer = make_tiny_tokenizer(512)
    encoder = ExampleEncoder(tokenizer, CONFIG.max_input_len, CONFIG.max_target_len)
    encoded = [encoder(history, target) for history, target in HISTORIES]
    return collate(encoded, seq_len=seq_len, target_len=CONFIG.max_target_len,
                   bos_id=tokenizer.bos_id, pad_id=tokenizer.pad_id)


@pytest.fixture(scope="module")
def model():
    return Gemma3(Gemma3Config.tiny(vocab_size=512), rngs=nnx.Rngs(0))


def test_padding_never_enters_the_losses(model):
    batch = _batch()
    terms = jax.jit(lambda b: loss_terms(model, b, CONFIG))
    base = terms(batch)
    rng = np.random.default_rng(0)
    noisy = batch._replace(
        tokens=np.where(batch.input_mask, batch.tokens, rng.integers(4, 500, batch.tokens.shape)),
        item_tokens=np.where(batch.item_mask, batch.item_tokens,
                             rng.integers(4, 500, batch.item_tokens.shape)),
    )
    longer = _batch(seq_len=320)  # More right padding, same users.
    for other in (terms(noisy), terms(longer)):
        for name in ("nig", "tt", "ut", "loss"):
            assert float(other[name]) == pytest.approx(float(base[name]), rel=1e-5), name
    assert float(base["tt"]) > 0 and float(base["ut"]) > 0


def test_without_contrastive_the_loss_is_nig_alone(model):
    ablation = CONFIG.replace(alpha=0.0, beta=0.0)
    terms = loss_terms(model, _batch(), ablation)
    assert float(terms["tt"]) == 0.0 and float(terms["ut"]) == 0.0
    assert float(terms["loss"]) == pytest.approx(float(terms["nig"]))
    full = loss_terms(model, _batch(), CONFIG)
    expected = 0.9 * full["nig"] + 0.125 * full["tt"] - 0.025 * full["ut"]
    assert float(full["loss"]) == pytest.approx(float(expected), rel=1e-6)


def test_bfloat16_steps_with_accumulation_lower_the_loss_on_a_fixed_batch():
    # float32 compute runs in every end-to-end test; this covers the bfloat16 option.
    config = CONFIG.replace(compute_dtype="bfloat16", microbatches=2, learning_rate=1e-2)
    model = Gemma3(Gemma3Config.tiny(vocab_size=512), rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    mesh = make_mesh()
    trainer, params = Trainer.create(model, config, mesh)
    opt_state = trainer.init_optimizer(params)
    batch = split_microbatches(_batch(), 2)
    losses = []
    for _ in range(4):
        params, opt_state, metrics = trainer.train_step(params, opt_state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


@pytest.mark.parametrize("microbatches", [1, 2])
def test_the_ablation_can_share_the_contrastive_runs_compiled_step(model, microbatches):
    """alpha and beta are step inputs: with shared_program the "w/o contrastive" run lowers
    to the very program of the contrastive run (one compile for both in an experiment), and
    its step equals the ablation's own (the contrastive terms weigh exactly nothing)."""
    mesh = make_mesh()
    batch = split_microbatches(_batch(), microbatches)
    base = CONFIG.replace(microbatches=microbatches)
    runs = {"calrec": base, "shared": base.replace(alpha=0.0, beta=0.0, shared_program=True),
            "own": base.replace(alpha=0.0, beta=0.0)}
    programs, results = {}, {}
    for name, config in runs.items():
        trainer, params = Trainer.create(nnx.clone(model), config, mesh)
        opt_state = trainer.init_optimizer(params)
        trainer.compiled_step(params, opt_state, batch)
        with jax.set_mesh(mesh):
            programs[name] = trainer._step.lower(
                params, opt_state, batch, jnp.zeros(2, jnp.float32)).as_text()
        params, _, metrics = trainer.train_step(params, opt_state, batch)
        results[name] = (jax.device_get(params), jax.device_get(metrics))
    assert programs["shared"] == programs["calrec"] != programs["own"]
    shared, own = results["shared"], results["own"]
    assert float(shared[1]["loss"]) == pytest.approx(float(own[1]["loss"]), rel=1e-6)
    assert float(shared[1]["tt"]) > 0 and float(own[1]["tt"]) == 0.0
    for got, want in zip(jax.tree.leaves(shared[0]), jax.tree.leaves(own[0]), strict=True):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-7)

"""Packed rows, chunked target-only cross-entropy and the two-pass (GradCache) step on the tiny
model, against independent references: every user alone in its own row with full logits, and
the single-pass full-batch step."""

from __future__ import annotations

import collections

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from calrec_core.model import Gemma3, Gemma3Config, make_mesh
from calrec_core.template import EncodedExample
from calrec_core.train.batching import (
    collate,
    first_fit_decreasing,
    pack,
    pack_plan,
    padding_fraction,
    split_microbatches,
)
from calrec_core.train.config import TrainConfig
from calrec_core.train.examples import CategorySequences, MixtureSampler
from calrec_core.train.losses import (
    chunked_target_nll,
    contrastive_loss,
    masked_mean,
    nig_loss,
)
from calrec_core.train.step import (
    Trainer,
    estimate_step_bytes,
    loss_terms,
    resolve_microbatches,
)

BOS, EOS, PAD = 2, 1, 0
CONFIG = TrainConfig.tiny().replace(batch_size=8, microbatches=1, max_input_len=40,
                                    max_target_len=16, logits_chunk=24)


def _examples(seed: int, users: int = 8) -> list[EncodedExample]:
    """Users of random lengths, several longer than the tiny model's sliding window (8)."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(users):
        prompt = [BOS, *rng.integers(4, 500, int(rng.integers(3, 30))).tolist()]
        target = [*rng.integers(4, 500, int(rng.integers(1, 14))).tolist(), EOS]
        out.append(EncodedExample(prompt, target, 1))
    return out


def _packed(examples, micro: int, seq_len: int = 56, item_len: int = 34) -> tuple:
    users = len(examples) // micro
    plans = [pack_plan(examples[a * users : (a + 1) * users], seq_len, item_len)
             for a in range(micro)]
    rows = max(len(plan[0]) for plan in plans)
    item_rows = max(len(plan[1]) for plan in plans)
    most = max(sum(len(examples[a * users + u].target_ids) for u in members)
               for a, plan in enumerate(plans) for members in plan[0])
    batch = pack(examples, plans, seq_len=seq_len, item_len=item_len, rows=rows,
                 item_rows=item_rows, target_len=most, bos_id=BOS, pad_id=PAD)
    return batch, plans


def _unpacked(examples, micro: int = 1):
    batch = collate(examples, seq_len=CONFIG.max_sequence_len, target_len=CONFIG.max_target_len,
                    bos_id=BOS, pad_id=PAD)
    return split_microbatches(batch, micro)


@pytest.fixture(scope="module")
def model():
    return Gemma3(Gemma3Config.tiny(vocab_size=512), rngs=nnx.Rngs(0))


def _reference_terms(model, examples, config):
    """The objective written out the plain way: every user alone in its own right-padded row
    (no segment ids), full logits at its target positions, per-row mean pooling."""
    one = collate(examples, seq_len=max(len(e.prompt_ids) + len(e.target_ids) for e in examples),
                  target_len=max(len(e.target_ids) for e in examples), bos_id=BOS, pad_id=PAD)
    out = model(one.tokens, one.positions, one.input_mask, logits_at=one.logits_at)
    nig = nig_loss(out.logits, one.labels, one.label_mask)
    item = model(one.item_tokens, one.item_positions, one.item_mask)
    v_item = masked_mean(item.hidden, one.item_pool_mask)
    tau = config.contrastive_temperature
    tt = contrastive_loss(v_item, masked_mean(out.hidden, one.target_mask), tau)
    ut = contrastive_loss(v_item, masked_mean(out.hidden, one.history_mask), tau)
    return {"loss": (1 - config.alpha - config.beta) * nig + config.alpha * tt
            + config.beta * ut, "nig": nig, "tt": tt, "ut": ut}


def _grads(model, fn):
    graphdef, params = nnx.split(model, nnx.Param)
    return jax.jit(jax.grad(lambda p: fn(nnx.merge(graphdef, p))))(params)


def _assert_trees_close(got, want, rtol=2e-4, atol=2e-6):
    for (path, g), w in zip(jax.tree_util.tree_leaves_with_path(got), jax.tree.leaves(want),
                            strict=True):
        np.testing.assert_allclose(np.asarray(g), np.asarray(w), rtol=rtol, atol=atol,
                                   err_msg=jax.tree_util.keystr(path))


def test_first_fit_decreasing_fills_bins_within_capacity():
    rng = np.random.default_rng(0)
    for _ in range(20):
        lengths = rng.integers(1, 50, int(rng.integers(1, 40))).tolist()
        bins = first_fit_decreasing(lengths, 50)
        assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
        assert all(sum(lengths[i] for i in b) <= 50 for b in bins)
        assert len(bins) <= 11 / 9 * -(-sum(lengths) // 50) + 1
    with pytest.raises(ValueError, match="exceeds"):
        first_fit_decreasing([51], 50)


def test_packed_layout_keeps_every_user_whole():
    examples = _examples(0)
    batch, plans = _packed(examples, micro=1)
    assert batch.tokens.shape[1] < len(examples)  # Several users share rows.
    for u, example in enumerate(examples):
        where = batch.segment_ids[0] == u + 1
        assert batch.tokens[0][where].tolist() == example.prompt_ids + example.target_ids
        assert batch.positions[0][where].tolist() == list(range(where.sum()))
        items = batch.item_segment_ids[0] == u + 1
        assert batch.item_tokens[0][items].tolist() == [BOS, *example.target_ids]
    for r in range(batch.tokens.shape[1]):  # Each label is the token after its logits position.
        for k in np.flatnonzero(batch.label_mask[0, r]):
            assert batch.tokens[0, r, batch.logits_at[0, r, k] + 1] == batch.labels[0, r, k]
    assert padding_fraction(batch) < padding_fraction(_unpacked(examples))


@pytest.mark.parametrize("seed", [0, 1])
def test_packed_losses_and_gradients_equal_each_user_alone(model, seed):
    """Segment mask, restarting positions (sliding window included), per-user pooling and the
    chunked target-only NLL together give exactly the users-alone objective."""
    examples = _examples(seed)
    packed, _ = _packed(examples, micro=1)
    packed = packed._replace(**{name: array[0] for name, array in packed._asdict().items()})
    config = CONFIG.replace(packing=True)
    want = _reference_terms(model, examples, config)
    terms = nnx.jit(lambda m, b: loss_terms(m, b, config))
    for batch in (packed, _unpacked(examples)._replace(
            **{n: a[0] for n, a in _unpacked(examples)._asdict().items()})):
        got = terms(model, batch)
        for name in ("loss", "nig", "tt", "ut"):
            assert float(got[name]) == pytest.approx(float(want[name]), rel=1e-5), name
    got_grads = _grads(model, lambda m: loss_terms(m, packed, config)["loss"])
    want_grads = _grads(model, lambda m: _reference_terms(m, examples, config)["loss"])
    _assert_trees_close(got_grads, want_grads)


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_chunked_target_nll_equals_full_logits(model, chunk):
    rng = np.random.default_rng(chunk)
    hidden = jnp.asarray(rng.normal(size=(3, 20, 64)), jnp.float32)
    logits_at = jnp.asarray(rng.integers(0, 20, (3, 9)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, 512, (3, 9)), jnp.int32)
    mask = jnp.asarray(rng.random((3, 9)) < 0.7)
    embedding = model.embedding[...]

    def chunked(h, w):
        return chunked_target_nll(h, logits_at, labels, mask, w, model_logits(w), chunk)

    def model_logits(w):
        from calrec_core.model.gemma import project_logits

        return lambda h, weights: project_logits(h, weights, jnp.float32, None)

    def full(h, w):
        picked = jnp.take_along_axis(h, logits_at[..., None], axis=1)
        logits = picked @ w.T
        return nig_loss(logits, labels, mask) * jnp.sum(mask)

    assert float(chunked(hidden, embedding)) == pytest.approx(float(full(hidden, embedding)),
                                                              rel=1e-5)
    _assert_trees_close(jax.grad(chunked, argnums=(0, 1))(hidden, embedding),
                        jax.grad(full, argnums=(0, 1))(hidden, embedding), atol=1e-6)


@pytest.mark.parametrize(("packing", "contrastive"), [(True, True), (False, True),
                                                       (True, False)])
def test_two_pass_microbatched_step_equals_the_single_pass_full_batch(model, packing,
                                                                      contrastive):
    """All 8 users of the step are the contrastive negatives however many microbatches."""
    config = CONFIG.replace(packing=packing)
    if not contrastive:
        config = config.replace(alpha=0.0, beta=0.0)
    examples = _examples(5)
    make = (lambda a: _packed(examples, a)[0]) if packing else (lambda a: _unpacked(examples, a))
    results = {}
    for micro in (1, 2, 4):
        trainer, params = Trainer.create(model, config.replace(microbatches=micro), make_mesh())
        results[micro] = trainer.gradients(params, make(micro))
    want_grads, want = results[1]
    for micro in (2, 4):
        grads, terms = results[micro]
        for name in ("loss", "nig", "tt", "ut", "target_tokens"):
            assert float(terms[name]) == pytest.approx(float(want[name]), rel=1e-5), name
        _assert_trees_close(grads, want_grads)
    if contrastive:  # Not the mean of per-microbatch contrastive losses: the full pool.
        halves = [_reference_terms(model, examples[i : i + 4], config)["tt"] for i in (0, 4)]
        assert abs(float(want["tt"]) - float(np.mean(halves))) > 1e-3


def test_packed_train_steps_lower_the_loss_in_bfloat16_with_float32_master_weights():
    config = CONFIG.replace(packing=True, compute_dtype="bfloat16", microbatches=2,
                            learning_rate=1e-2)
    model = Gemma3(Gemma3Config.tiny(vocab_size=512), rngs=nnx.Rngs(0), dtype=jnp.bfloat16)
    trainer, params = Trainer.create(model, config, make_mesh())
    opt_state = trainer.init_optimizer(params)
    batch, _ = _packed(_examples(3), micro=2)
    losses = []
    for _ in range(4):
        params, opt_state, metrics = trainer.train_step(params, opt_state, batch)
        losses.append(float(metrics["loss"]))
    assert losses[-1] < losses[0]
    assert all(leaf.dtype == jnp.float32 for leaf in jax.tree.leaves(params))


def test_memory_budget_sizes_microbatches_and_is_checked_before_the_step(model):
    mesh = make_mesh()
    paper = TrainConfig.paper()
    assert resolve_microbatches(paper, mesh, budget=None).microbatches in (1, paper.batch_size)
    big = resolve_microbatches(paper, mesh, 300.0, budget=600e9)
    small = resolve_microbatches(paper, mesh, 300.0, budget=60e9)
    assert big.microbatches < small.microbatches and not small.remat
    # Remat only when not even one user per device fits without it.
    model_config = Gemma3Config.gemma3_270m()
    tight = estimate_step_bytes(paper, model_config, paper.batch_size, 1, False, 300.0) - 1
    assert estimate_step_bytes(paper, model_config, paper.batch_size, 1, True, 300.0) < tight
    assert resolve_microbatches(paper, mesh, 300.0, budget=tight).remat
    # Packed rows hold fewer computed tokens per user than the padded worst case: fewer slices.
    assert resolve_microbatches(paper, mesh, None, budget=60e9).microbatches > small.microbatches
    config = CONFIG.replace(microbatches=2, device_memory_gb=1e-4)
    trainer, params = Trainer.create(model, config, mesh)
    opt_state = trainer.init_optimizer(params)
    batch = _unpacked(_examples(0), 2)
    with pytest.raises(MemoryError, match="budget"):
        trainer.train_step(params, opt_state, batch)
    assert trainer.memory_bytes > 0


def test_users_are_drawn_without_replacement_within_a_step():
    def seqs(name, n):
        return CategorySequences(name, tuple(f"{name}{i}" for i in range(n)),
                                 tuple(("a", "b", "c") for _ in range(n)))

    sampler = MixtureSampler({"A": seqs("A", 30), "B": seqs("B", 5)}, {"A": 1.0, "B": 1.0},
                             seed=0, stream="s", max_drop_last=1)
    for step in range(5):
        refs = [sampler.example(step, slot) for slot in range(24)]
        per_category = collections.Counter(ref.category for ref in refs)
        users = collections.Counter((ref.category, ref.user_index) for ref in refs)
        # Category A (30 users) never repeats; B (5 users) repeats only past its size.
        assert max(n for (c, _), n in users.items() if c == "A") == 1
        most_b = max((n for (c, _), n in users.items() if c == "B"), default=0)
        assert most_b == -(-per_category["B"] // 5) or per_category["B"] == 0
        # Any slot drawn alone (a fresh sampler) is the same example.
        fresh = MixtureSampler({"A": seqs("A", 30), "B": seqs("B", 5)}, {"A": 1.0, "B": 1.0},
                               seed=0, stream="s", max_drop_last=1)
        assert fresh.example(step, 17) == refs[17]


EIGHT_DEVICES = """
import json, sys
import jax, numpy as np
from flax import nnx
sys.path.insert(0, sys.argv[1])
from test_packing import CONFIG, _examples, _packed_rows
from calrec_core.model import Gemma3, Gemma3Config, make_mesh
from calrec_core.train.step import Trainer, batch_sharding
from calrec_core.train.stream import to_global

config = CONFIG.replace(packing=True, batch_size=16, microbatches=2)
mesh = make_mesh(data=-1, fsdp=int(sys.argv[2]))
trainer, params = Trainer.create(Gemma3(Gemma3Config.tiny(vocab_size=512), rngs=nnx.Rngs(0)),
                                 config, mesh)
opt_state = trainer.init_optimizer(params)
local = _packed_rows(_examples(7, users=16), micro=2, multiple=8)
batch = to_global(local, batch_sharding(mesh))
out = []
for _ in range(2):
    params, opt_state, metrics = trainer.train_step(params, opt_state, batch)
    out.append({k: float(v) for k, v in metrics.items()})
print(json.dumps(out))
"""


def _packed_rows(examples, micro, multiple):
    """Packed batch with row counts rounded up to ``multiple`` (empty rows are padding)."""
    users = len(examples) // micro
    plans = [pack_plan(examples[a * users : (a + 1) * users], 56, 34) for a in range(micro)]
    rows = -(-max(len(p[0]) for p in plans) // multiple) * multiple
    item_rows = -(-max(len(p[1]) for p in plans) // multiple) * multiple
    return pack(examples, plans, seq_len=56, item_len=34, rows=rows, item_rows=item_rows,
                target_len=64, bos_id=BOS, pad_id=PAD)


def test_packed_two_pass_step_on_eight_devices_matches_one_device():
    import json
    import os
    import pathlib
    import subprocess
    import sys

    here = str(pathlib.Path(__file__).parent)
    results = {}
    for devices, fsdp in ((1, 1), (8, 1), (8, 2)):
        env = dict(os.environ, JAX_PLATFORMS="cpu",
                   XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
        process = subprocess.run([sys.executable, "-c", EIGHT_DEVICES, here, str(fsdp)],
                                 env=env, capture_output=True, text=True, timeout=900)
        assert process.returncode == 0, process.stderr[-3000:]
        results[devices, fsdp] = json.loads(process.stdout.strip().splitlines()[-1])
    for key in ((8, 1), (8, 2)):
        for got, want in zip(results[key], results[1, 1], strict=True):
            for name in ("loss", "nig", "tt", "ut", "grad_norm", "target_tokens"):
                assert got[name] == pytest.approx(want[name], rel=1e-4), (key, name)


def test_a_packed_stage_run_trains_resumes_and_pads_less(ingested_sample, tmp_path):
    """The stage loop end to end with packed rows (the demo and paper presets' layout): it
    trains, logs the padding fraction, pads less than one row per user, and resumes."""
    import dataclasses

    from calrec_core.train.metrics import read_metrics
    from calrec_core.train.stages import run_stage2

    # Prompts long enough to differ in length (short ones share a row when packed).
    base = dataclasses.replace(TrainConfig.tiny(), stage2_steps=2, eval_every=2,
                               checkpoint_every=1, max_input_len=768, length_bucket=64)
    padding = {}
    for packing in (False, True):
        config = dataclasses.replace(base, packing=packing)
        run = tmp_path / f"packing-{packing}"
        result = run_stage2(ingested_sample, "Gift_Cards", None, run, config)
        records = [r for r in read_metrics(run) if r["kind"] == "train"]
        assert [r["step"] for r in records] == [1, 2] and result.selected_step == 2
        padding[packing] = np.mean([r["padding_fraction"] for r in records])
    assert padding[True] < padding[False]
    # A packed run resumed from its step-1 checkpoint repeats the uninterrupted losses.
    config = dataclasses.replace(base, packing=True)
    resumed = tmp_path / "resumed"
    run_stage2(ingested_sample, "Gift_Cards", None, resumed,
               dataclasses.replace(config, stage2_steps=1))
    run_stage2(ingested_sample, "Gift_Cards", None, resumed, config)
    losses = [r["loss"] for r in read_metrics(resumed) if r["kind"] == "train"]
    expected = [r["loss"] for r in read_metrics(tmp_path / "packing-True") if r["kind"] == "train"]
    np.testing.assert_allclose(losses, expected, rtol=1e-5)


@pytest.mark.parametrize(("chunk_tokens", "recomputed"), [(27, False), (1000, False),
                                                          (21, True)])
def test_chunked_target_nll_recomputes_only_when_the_targets_need_several_chunks(
        chunk_tokens, recomputed):
    """3 rows x 9 targets: 27 or more tokens per chunk hold them all, so the backward pass
    keeps the one chunk's logits instead of projecting again; fewer need the remat'd scan."""
    rows, targets, vocab, dim = 3, 9, 50, 8
    rng = np.random.default_rng(0)
    hidden = jnp.asarray(rng.normal(size=(rows, 12, dim)), jnp.float32)
    logits_at = jnp.asarray(rng.integers(0, 12, (rows, targets)), jnp.int32)
    labels = jnp.asarray(rng.integers(0, vocab, (rows, targets)), jnp.int32)
    mask = jnp.ones((rows, targets), bool)
    embedding = jnp.asarray(rng.normal(size=(vocab, dim)), jnp.float32)

    def loss(h, w):
        return chunked_target_nll(h, logits_at, labels, mask, w,
                                  lambda x, weights: x @ weights.T, chunk_tokens)

    jaxpr = str(jax.make_jaxpr(jax.grad(loss, argnums=(0, 1)))(hidden, embedding))
    assert ("checkpoint" in jaxpr or "remat" in jaxpr) is recomputed
    assert ("scan" in jaxpr) is recomputed


def test_stage_streams_given_a_shared_ladder_take_only_its_shapes(ingested_sample):
    """An experiment's stage runs share one ladder (shared_ladder): every stage's packed steps
    take one of its shapes, so the runs share their compiled steps."""
    from calrec_core.data import load_mixture
    from calrec_core.model import make_tiny_tokenizer
    from calrec_core.train.batching import ExampleEncoder
    from calrec_core.train.examples import category_roles, load_training_sequences
    from calrec_core.train.stream import BatchStream, shared_ladder

    tokenizer = make_tiny_tokenizer(512)
    config = TrainConfig.tiny().replace(packing=True, max_input_len=768)
    ladder = shared_ladder(ingested_sample, config, tokenizer)
    assert 1 <= len(ladder.levels) <= 3 and not ladder.levels[-1].packed
    config = config.replace(step_shapes=ladder.packed_levels())
    weights = {k: float(v) for k, v in load_mixture(ingested_sample)["weights"].items()}
    evals = [c for c, r in category_roles(ingested_sample, sorted(weights)).items()
             if r == "eval"]
    allowed = {(config.microbatches, level.rows, level.seq_len) for level in ladder.levels}
    encoder = ExampleEncoder(tokenizer, config.max_input_len, config.max_target_len)
    for stage, mixture in [("stage1", weights)] + [("stage2", {c: 1.0}) for c in evals]:
        sampler = MixtureSampler(load_training_sequences(ingested_sample, sorted(mixture)),
                                 mixture, seed=config.seed, stream=stage, max_drop_last=4)
        stream = BatchStream(sampler, encoder, config)
        assert stream.ladder == ladder
        for step in range(6):
            assert stream.local_batch(step).tokens.shape in allowed

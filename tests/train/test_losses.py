"""The objective against naive NumPy loops on hand-built tensors, and its properties."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from calrec_core.train.losses import (
    calrec_loss,
    contrastive_loss,
    cosine_similarity_matrix,
    masked_mean,
    nig_loss,
)


def naive_contrastive(items: np.ndarray, users: np.ndarray, tau: float) -> float:
    """Eq. 2 / Eq. 3 written out: for item i, the negatives are the OTHER users' vectors."""

    def cos(a, b):
        return float(a @ b / (np.linalg.norm(a) * np.linalg.norm(b)))

    total = 0.0
    for i in range(len(items)):
        numerator = math.exp(cos(users[i], items[i]) / tau)
        denominator = sum(math.exp(cos(users[j], items[i]) / tau) for j in range(len(items)))
        total += math.log(numerator / denominator)
    return -total / len(items)


def naive_nig(logits, labels, mask, reduction):
    per_user = []
    tokens = 0
    for b in range(logits.shape[0]):
        nll = 0.0
        for k in range(logits.shape[1]):
            if mask[b, k]:
                row = logits[b, k].astype(np.float64)
                log_z = np.log(np.sum(np.exp(row - row.max()))) + row.max()
                nll += log_z - row[labels[b, k]]
                tokens += 1
        per_user.append(nll)
    return sum(per_user) / tokens if reduction == "token_mean" else float(np.mean(per_user))


@pytest.mark.parametrize("reduction", ["token_mean", "sequence_sum"])
def test_nig_loss_matches_naive_loop(reduction):
    rng = np.random.default_rng(0)
    logits = rng.normal(size=(3, 5, 11)).astype(np.float32) * 3
    labels = rng.integers(0, 11, size=(3, 5))
    mask = np.array([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1], [1, 0, 0, 0, 0]], bool)
    got = nig_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask), reduction)
    assert float(got) == pytest.approx(naive_nig(logits, labels, mask, reduction), rel=1e-5)


def test_nig_loss_ignores_masked_positions_and_runs_float32_on_bf16():
    rng = np.random.default_rng(1)
    logits = rng.normal(size=(2, 4, 7)).astype(np.float32)
    labels = rng.integers(0, 7, size=(2, 4))
    mask = np.array([[1, 1, 0, 0], [1, 1, 1, 0]], bool)
    garbage = logits.copy()
    garbage[~mask] = 1e4
    base = nig_loss(jnp.asarray(logits), jnp.asarray(labels), jnp.asarray(mask))
    assert float(nig_loss(jnp.asarray(garbage), jnp.asarray(labels), jnp.asarray(mask))) == \
        pytest.approx(float(base), rel=1e-6)
    low = nig_loss(jnp.asarray(logits, jnp.bfloat16), jnp.asarray(labels), jnp.asarray(mask))
    assert low.dtype == jnp.float32


def test_contrastive_loss_matches_equations_2_and_3():
    rng = np.random.default_rng(2)
    items = rng.normal(size=(6, 9)).astype(np.float32)
    users = rng.normal(size=(6, 9)).astype(np.float32)
    got = contrastive_loss(jnp.asarray(items), jnp.asarray(users), 0.5)
    assert float(got) == pytest.approx(naive_contrastive(items, users, 0.5), rel=1e-5)


def test_contrastive_negatives_are_other_users_not_other_items():
    # One item close to two users: Eq. 2 normalises over users j for a fixed item i, so
    # swapping the roles of the two towers must change the value on this batch.
    items = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0]], np.float32)
    users = np.array([[1.0, 0.0], [0.0, 1.0], [0.7, 0.7]], np.float32)
    forward = float(contrastive_loss(jnp.asarray(items), jnp.asarray(users), 0.5))
    swapped = float(contrastive_loss(jnp.asarray(users), jnp.asarray(items), 0.5))
    assert forward == pytest.approx(naive_contrastive(items, users, 0.5), rel=1e-5)
    assert abs(forward - swapped) > 1e-3


def test_contrastive_loss_falls_as_positives_align():
    rng = np.random.default_rng(3)
    items = rng.normal(size=(8, 16))
    noise = rng.normal(size=(8, 16))
    losses = [float(contrastive_loss(jnp.asarray(items + scale * noise),
                                     jnp.asarray(items), 0.5))
              for scale in (4.0, 1.0, 0.25, 0.0)]
    assert all(a > b for a, b in zip(losses, losses[1:], strict=False))


def test_contrastive_loss_is_invariant_to_permuting_the_batch():
    rng = np.random.default_rng(4)
    items = rng.normal(size=(7, 5))
    users = rng.normal(size=(7, 5))
    order = rng.permutation(7)
    base = contrastive_loss(jnp.asarray(items), jnp.asarray(users), 0.5)
    permuted = contrastive_loss(jnp.asarray(items[order]), jnp.asarray(users[order]), 0.5)
    assert float(permuted) == pytest.approx(float(base), rel=1e-6)


def test_masked_mean_ignores_padding():
    rng = np.random.default_rng(5)
    hidden = rng.normal(size=(2, 6, 3)).astype(np.float32)
    mask = np.array([[0, 1, 1, 1, 0, 0], [0, 1, 0, 0, 0, 0]], bool)
    expected = np.stack([hidden[b][mask[b]].mean(axis=0) for b in range(2)])
    garbage = hidden.copy()
    garbage[~mask] = 1e6
    np.testing.assert_allclose(masked_mean(jnp.asarray(garbage), jnp.asarray(mask)), expected,
                               rtol=1e-6)


def test_cosine_similarity_matrix_and_mix():
    a = jnp.asarray([[3.0, 0.0], [0.0, 2.0]])
    b = jnp.asarray([[1.0, 1.0]])
    np.testing.assert_allclose(cosine_similarity_matrix(a, b), [[2**-0.5], [2**-0.5]],
                               rtol=1e-6)
    total = calrec_loss(jnp.float32(2.0), jnp.float32(4.0), jnp.float32(8.0), 0.125, -0.025)
    assert float(total) == pytest.approx(0.9 * 2.0 + 0.125 * 4.0 - 0.025 * 8.0)


def test_gradient_flows_to_both_towers():
    rng = np.random.default_rng(6)
    items = jnp.asarray(rng.normal(size=(4, 3)))
    users = jnp.asarray(rng.normal(size=(4, 3)))
    g_items, g_users = jax.grad(lambda i, u: contrastive_loss(i, u, 0.5), argnums=(0, 1))(
        items, users)
    assert float(jnp.abs(g_items).sum()) > 0 and float(jnp.abs(g_users).sum()) > 0

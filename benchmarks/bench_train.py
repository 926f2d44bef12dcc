"""Training throughput: real tokens/s, padding fraction, step time and MFU of the jitted step.

Times the optimizer step (both towers, the three losses, Adam) on batches drawn exactly as
Stage I draws them, for packed rows (the change) and, as the baseline in the same run, one
padded row per user (``packing=false``); optionally also the NIG-only ablation. Reports per
variant the distinct step shapes (each one compiled program) with their step counts, each
compile's seconds apart from the steady step time (the median of the compiled steps), real
(unpadded) tokens per second through both towers, the share of computed token slots that
are padding, XLA's compiled memory and MFU.

MFU = model FLOPs / step time / peak FLOPs, model FLOPs = 6 * N * real tokens (N: the
non-embedding parameters, both towers' tokens) + 6 * V * D * real target tokens (the tied
vocabulary projection, only at target positions). Peak per device kind: H100/H200 bf16
989e12, A100 312e12, TPU v4 275e12, v5e 197e12, v5p 459e12, v6e 918e12; others (the CPU)
need --peak-tflops. Float32 compute on a GPU/TPU is measured against the same bf16 peak.

    python benchmarks/bench_train.py [--data DATA_DIR] [--preset demo] [--steps 3]
        [--set batch_size=64 --set max_input_len=512 ...] [--variants packed,unpacked]
        [--peak-tflops X] [--output bench.json]

Without --data the bundled sample is ingested into a temporary folder first. The issue's
accelerator goal (3x the 85k real tokens/s of 64 users x 512 input tokens in bf16 on one
H100/H200) is: --preset paper --set batch_size=64 --set max_input_len=512.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import statistics
import tempfile
import time

REPO = pathlib.Path(__file__).resolve().parents[1]
def _ingested(data: str | None, scratch: pathlib.Path) -> str:
    if data:
        return data
    from calrec_core.data import run_ingest

    output = scratch / "data"
    run_ingest(str(REPO / "data/sample/amazon2018"), str(REPO / "configs/sample.yaml"),
               str(output))
    return str(output)


def measure(data_dir: str, config, steps: int, model, tokenizer, peak: float | None) -> dict:
    import jax
    from flax import nnx

    from calrec_core.data import load_mixture
    from calrec_core.model import make_mesh
    from calrec_core.model.sharding import batch_multiple
    from calrec_core.train.batching import ExampleEncoder, padding_fraction
    from calrec_core.train.examples import MixtureSampler, load_training_sequences
    from calrec_core.train.step import Trainer, batch_sharding, resolve_microbatches
    from calrec_core.train.stream import BatchStream, to_global

    weights = load_mixture(data_dir)["weights"]
    sampler = MixtureSampler(load_training_sequences(data_dir, sorted(weights)), weights,
                             seed=config.seed, stream="stage1",
                             max_drop_last=config.max_drop_last)
    encoder = ExampleEncoder(tokenizer, config.max_input_len, config.max_target_len)
    mesh = make_mesh()
    stream = BatchStream(sampler, encoder, config, row_multiple=batch_multiple(mesh))
    config = resolve_microbatches(config, mesh, stream.tokens_per_user(0))
    stream = BatchStream(sampler, encoder, config, row_multiple=batch_multiple(mesh))
    # A copy of the parameters per measured variant: the step donates its inputs.
    trainer, params = Trainer.create(nnx.clone(model), config, mesh)
    opt_state = trainer.init_optimizer(params)
    embedding = model.config.vocab_size * model.config.embed_dim
    body = model.config.num_non_embedding_params
    timings, tokens, targets, padding, flops = [], [], [], [], []
    shapes: dict[str, int] = {}  # distinct step shapes (one compiled program each): steps
    compiles: list[float] = []
    for step in range(steps + 1):
        local = stream.local_batch(step)
        batch = to_global(local, batch_sharding(mesh))
        shape = "x".join(map(str, batch.tokens.shape)) + " items " + "x".join(
            map(str, batch.item_tokens.shape)) + f" targets {batch.labels.shape[-1]}"
        if shape not in shapes:  # A new program: its compile is timed apart from the step.
            began = time.perf_counter()
            trainer.compiled_step(params, opt_state, batch)
            compiles.append(time.perf_counter() - began)
        shapes[shape] = shapes.get(shape, 0) + 1
        began = time.perf_counter()
        params, opt_state, metrics = trainer.train_step(params, opt_state, batch)
        jax.block_until_ready(metrics)
        timings.append(time.perf_counter() - began)
        real = int(local.input_mask.sum()) + int(local.item_mask.sum())
        target = int(local.label_mask.sum())
        tokens.append(real)
        targets.append(target)
        padding.append(padding_fraction(local))
        flops.append(6 * body * real + 6 * embedding * target)
    step_s = statistics.median(timings[1:])
    model_flops = statistics.mean(flops[1:])
    return {
        "microbatches": config.microbatches,
        "remat": config.remat,
        "step_shapes": shapes,
        "compiles": len(compiles),
        "compile_s": [round(c, 2) for c in compiles],
        "ladder": stream.ladder.describe() if config.packing else None,
        "compiled_memory_gib": (round(trainer.memory_bytes / 2**30, 2)
                                if trainer.memory_bytes else None),
        "step_s_median": round(step_s, 4),
        "step_s_all": [round(t, 4) for t in timings[1:]],
        "real_tokens_per_step": statistics.mean(tokens[1:]),
        "real_tokens_per_s": round(statistics.mean(tokens[1:]) / step_s, 1),
        "padding_fraction": round(statistics.mean(padding[1:]), 4),
        "model_tflops_per_step": round(model_flops / 1e12, 3),
        "mfu": round(model_flops / step_s / peak, 4) if peak else None,
        "last_shape": list(batch.tokens.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="ingested data folder (default: ingest the sample)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE",
                        help="TrainConfig override (repeatable)")
    parser.add_argument("--variants", default="packed,unpacked",
                        help="comma list of packed, unpacked, nig_only (packed, alpha=beta=0)")
    parser.add_argument("--peak-tflops", type=float, help="peak FLOP/s of one device, in T")
    parser.add_argument("--output", help="also write the JSON report here")
    args = parser.parse_args()

    import jax

    from calrec_core.train.config import TrainConfig
    from calrec_core.train.models import fresh_model

    config = TrainConfig.preset(args.preset).with_overrides(args.set)
    variants = {"packed": config.replace(packing=True),
                "unpacked": config.replace(packing=False),
                "nig_only": config.replace(packing=True, alpha=0.0, beta=0.0)}
    kind = str(jax.devices()[0].device_kind)
    from calrec_core.experiment.timing import peak_flops

    peak = peak_flops(kind, args.peak_tflops)
    report = {"preset": args.preset, "overrides": args.set, "device": kind,
              "devices": jax.device_count(), "peak_flops": peak,
              "batch_size": config.batch_size, "compute_dtype": config.compute_dtype}
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = _ingested(args.data, pathlib.Path(scratch))
        model, tokenizer = fresh_model(config)
        for name in args.variants.split(","):
            report[name] = measure(data_dir, variants[name], args.steps, model, tokenizer, peak)
            print(json.dumps({name: report[name]}), flush=True)
    if "packed" in report and "unpacked" in report:
        report["speedup_packed_over_unpacked_tokens_per_s"] = round(
            report["packed"]["real_tokens_per_s"] / report["unpacked"]["real_tokens_per_s"], 3)
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()

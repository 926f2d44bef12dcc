"""Training throughput of the `demo` preset (real Gemma 3 270M) on this machine.

Times the jitted optimizer step (forward + backward of both towers + Adam) on batches drawn
exactly as Stage I draws them, and, as the baseline in the same run, the same step without
the contrastive item tower (alpha = beta = 0). Reports the median step time, real
(unpadded) tokens per second and the CALRec / NIG-only step-time ratio.

    python benchmarks/bench_train.py --data DATA_DIR [--steps 3] [--output bench.json]

Without --data the bundled sample is ingested into a temporary folder first.
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


def measure(data_dir: str, config, steps: int, model, tokenizer) -> dict:
    import jax
    from flax import nnx

    from calrec_core.data import load_mixture
    from calrec_core.model import make_mesh
    from calrec_core.train.batching import ExampleEncoder
    from calrec_core.train.examples import MixtureSampler, load_training_sequences
    from calrec_core.train.step import Trainer, batch_sharding
    from calrec_core.train.stream import BatchStream, to_global

    weights = load_mixture(data_dir)["weights"]
    sampler = MixtureSampler(load_training_sequences(data_dir, sorted(weights)), weights,
                             seed=config.seed, stream="stage1",
                             max_drop_last=config.max_drop_last)
    stream = BatchStream(sampler, ExampleEncoder(tokenizer, config.max_input_len,
                                                 config.max_target_len), config)
    mesh = make_mesh()
    # A copy of the parameters per measured variant: the step donates its inputs.
    trainer, params = Trainer.create(nnx.clone(model), config, mesh)
    opt_state = trainer.init_optimizer(params)
    rows = config.batch_size // config.microbatches
    timings, tokens = [], []
    for step in range(steps + 1):
        local = stream.local_batch(step)
        batch = to_global(local, batch_sharding(mesh), rows)
        began = time.perf_counter()
        params, opt_state, metrics = trainer.train_step(params, opt_state, batch)
        jax.block_until_ready(metrics)
        timings.append(time.perf_counter() - began)
        tokens.append(int(local.input_mask.sum()))
    step_s = statistics.median(timings[1:])
    return {
        "compile_and_first_step_s": round(timings[0], 2),
        "step_s_median": round(step_s, 3),
        "step_s_all": [round(t, 3) for t in timings[1:]],
        "real_tokens_per_step": statistics.mean(tokens[1:]),
        "tokens_per_s": round(statistics.mean(tokens[1:]) / step_s, 1),
        "padded_shape": list(batch.tokens.shape),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", help="ingested data folder (default: ingest the sample)")
    parser.add_argument("--steps", type=int, default=3, help="timed steps after the first")
    parser.add_argument("--preset", default="demo")
    parser.add_argument("--output", help="also write the JSON report here")
    args = parser.parse_args()

    import jax

    from calrec_core.train.config import TrainConfig
    from calrec_core.train.models import fresh_model

    config = TrainConfig.preset(args.preset)
    with tempfile.TemporaryDirectory() as scratch:
        data_dir = _ingested(args.data, pathlib.Path(scratch))
        model, tokenizer = fresh_model(config)
        calrec = measure(data_dir, config, args.steps, model, tokenizer)
        nig_only = measure(data_dir, config.replace(alpha=0.0, beta=0.0), args.steps, model,
                           tokenizer)
    report = {
        "preset": args.preset,
        "device": str(jax.devices()[0].device_kind),
        "batch_size": config.batch_size,
        "calrec_two_towers": calrec,
        "baseline_nig_only": nig_only,
        "step_time_ratio_calrec_over_nig_only": round(
            calrec["step_s_median"] / nig_only["step_s_median"], 3),
    }
    text = json.dumps(report, indent=2)
    print(text)
    if args.output:
        pathlib.Path(args.output).write_text(text + "\n")


if __name__ == "__main__":
    main()

"""Wall time of a full test-split evaluation on this machine (LIR and a generative method).

LIR is run on every user. A generative method (default: the pretrained Gemma with the CALRec
template) is run on a user cap with a reduced N_gen when the full set is too slow; the
script then extrapolates linearly to all users and to N_gen = 32, and says so.

    calrec ingest ...   # writes DATA/<Category>/{test-*.tfrecord,corpus.parquet}
    python benchmarks/bench_eval.py --data DATA --category Office_Products \\
        [--model pretrained] [--users 8] [--n-gen 4] [--max-new-tokens 80]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time

from calrec_core.data import read_examples
from calrec_core.eval import EvalConfig, run_evaluation


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", required=True)
    parser.add_argument("--category", default="Office_Products")
    parser.add_argument("--model", default="pretrained", help="'pretrained', a path or 'none'")
    parser.add_argument("--users", type=int, default=8, help="user cap for the model run")
    parser.add_argument("--n-gen", type=int, default=4)
    parser.add_argument("--max-new-tokens", type=int, default=80)
    args = parser.parse_args()
    total_users = len(read_examples(args.data, args.category, "test"))
    paper = EvalConfig.paper()
    with tempfile.TemporaryDirectory() as scratch:
        start = time.perf_counter()
        lir = run_evaluation(args.data, args.category, f"{scratch}/lir", methods=["lir"],
                             config=paper, show_progress=False)
        lir_seconds = time.perf_counter() - start
        print(f"LIR, all {total_users} users, {lir['corpus_size']} items: {lir_seconds:.1f}s "
              f"({1000 * lir_seconds / total_users:.2f} ms/user); "
              f"ndcg@10 {lir['methods']['lir']['ndcg@10_opt']:.4f}/"
              f"{lir['methods']['lir']['ndcg@10_pes']:.4f}")
        if args.model == "none":
            return
        config = dataclasses.replace(
            paper, n_gen=args.n_gen, n_preds=min(paper.n_preds, args.n_gen),
            max_users=args.users, max_new_tokens=args.max_new_tokens,
            user_batch_size=min(args.users, 8),
        )
        from calrec_core.eval.evaluate import load_model

        start = time.perf_counter()
        loaded = load_model(args.model)
        load_seconds = time.perf_counter() - start
        # One user first, so that compiling the sampler is not billed to every user.
        start = time.perf_counter()
        run_evaluation(args.data, args.category, f"{scratch}/warmup", methods=["calrec"],
                       config=dataclasses.replace(config, max_users=1),
                       model_and_tokenizer=loaded, show_progress=False)
        warmup_seconds = time.perf_counter() - start
        start = time.perf_counter()
        run = run_evaluation(args.data, args.category, f"{scratch}/model", methods=["calrec"],
                             config=config, model_and_tokenizer=loaded, show_progress=True)
        seconds = time.perf_counter() - start
    users = run["methods"]["calrec"]["num_users"]
    per_user = seconds / users
    print(f"calrec [{args.model}] load {load_seconds:.1f}s, first user (compiles) "
          f"{warmup_seconds:.1f}s; {users} users, N_gen {args.n_gen}: "
          f"{seconds:.1f}s ({per_user:.2f} s/user)")
    print(f"extrapolated (linear; new prompt lengths may still compile): all {total_users} "
          f"users at N_gen {args.n_gen}: "
          f"{per_user * total_users / 3600:.1f} h; at N_gen 32: "
          f"{per_user * total_users * 32 / args.n_gen / 3600:.1f} h")


if __name__ == "__main__":
    main()

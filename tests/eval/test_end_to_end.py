"""run_evaluation end to end with a tiny random-init Gemma: every method, counts, determinism."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest

from calrec_core.eval import EvalConfig, evaluate_split, run_evaluation, write_report


@pytest.fixture(scope="module")
def tiny_model():
    from flax import nnx

    from calrec_core.model import Gemma3, Gemma3Config, make_tiny_tokenizer

    return Gemma3(Gemma3Config.tiny(), rngs=nnx.Rngs(0)), make_tiny_tokenizer()


def test_every_method_with_a_tiny_model(gift_cards_dir, tmp_path, tiny_model):
    config = EvalConfig.tiny()
    methods = ["calrec", "calrec_hier", "gpt4rec", "lir"]
    result = run_evaluation(gift_cards_dir, "Gift_Cards", tmp_path / "a", methods=methods,
                            config=config, model_and_tokenizer=tiny_model, show_progress=False)
    users = config.max_users
    for method in methods:
        metrics = result["methods"][method]
        assert metrics["num_users"] == users
        for name in ("ndcg@10", "recall@1", "recall@10", "mrr"):
            assert 0.0 <= metrics[f"{name}_pes"] <= metrics[f"{name}_opt"] <= 1.0
    calrec = result["methods"]["calrec"]
    assert calrec["num_generations"] == users * config.n_gen
    # A random byte-level model writes no well-formed item text.
    assert calrec["format_error_rate"] == 1.0
    predictions = pd.read_parquet(tmp_path / "a" / "predictions.parquet")
    assert sorted(predictions["method"].unique()) == sorted(methods)
    calrec_rows = predictions[predictions["method"] == "calrec"]
    hier_rows = predictions[predictions["method"] == "calrec_hier"]
    # Both methods rank the very same samples.
    samples = [list(g) for g in calrec_rows["generations"]]
    assert any(text for user_samples in samples for text in user_samples)
    assert samples == [list(g) for g in hier_rows["generations"]]
    assert all(len(asins) == config.top_k for asins in calrec_rows["top_asins"])

    # Same inputs and seed, other batching and sharding: identical outputs.
    rebatched = dataclasses.replace(config, user_batch_size=2, shard_size=5, decode_batch_size=8)
    again = run_evaluation(gift_cards_dir, "Gift_Cards", tmp_path / "b", methods=["calrec"],
                           config=rebatched, model_and_tokenizer=tiny_model,
                           show_progress=False)
    assert again["methods"]["calrec"] == calrec
    other = pd.read_parquet(tmp_path / "b" / "predictions.parquet")
    assert [list(g) for g in other["generations"]] == samples
    assert json.loads((tmp_path / "a" / "metrics.json").read_text())["model"] == "in-memory model"
    assert "Hierarchical match vs BM25" in (tmp_path / "a" / "report.md").read_text()
    report = write_report([tmp_path / "a" / "metrics.json"], tmp_path / "report")
    markdown = report["markdown"].read_text()
    assert "Paired t-test p-values against calrec [in-memory model]" in markdown
    assert "| lir |" in markdown


def test_evaluate_split_for_checkpoint_selection(gift_cards_dir, tiny_model):
    model, tokenizer = tiny_model
    config = dataclasses.replace(EvalConfig.tiny(), max_users=3)
    result = evaluate_split(model, tokenizer, gift_cards_dir, "Gift_Cards", "valid", config)
    assert result.method == "calrec"
    assert result.metrics["num_users"] == 3 == len(result.per_user)
    assert "ndcg@10_pes" in result.metrics


def test_evaluate_command_loads_an_exported_checkpoint(gift_cards_dir, tmp_path):
    from flax import nnx

    from calrec_core.cli import main
    from calrec_core.model.export import export_trained
    from calrec_core.train.config import TrainConfig
    from calrec_core.train.models import fresh_model

    train_config = TrainConfig.tiny()
    model, tokenizer = fresh_model(train_config)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    checkpoint = export_trained(tmp_path / "selected", params, model, tokenizer,
                                train_config.model, {"train_config": train_config.to_dict()})
    out = tmp_path / "run"
    assert main(["evaluate", "--data", str(gift_cards_dir), "--category", "Gift_Cards",
                 "--split", "valid", "--model", str(checkpoint), "--methods", "calrec",
                 "--preset", "tiny", "--max-users", "2", "--output", str(out)]) == 0
    from_disk = json.loads((out / "metrics.json").read_text())
    assert from_disk["model"] == "selected"
    # The exported model samples exactly what the in-memory one does.
    config = dataclasses.replace(EvalConfig.tiny(), max_users=2)
    in_memory = evaluate_split(model, tokenizer, gift_cards_dir, "Gift_Cards", "valid", config)
    assert from_disk["methods"]["calrec"] == in_memory.metrics
    on_disk = pd.read_parquet(out / "predictions.parquet")
    assert [list(g) for g in on_disk["generations"]] == [
        list(g) for g in in_memory.per_user["generations"]
    ]

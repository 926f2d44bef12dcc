"""Model selection on the pessimistic NDCG@10 (§4) of a fixed, seeded sample of validation
users: the same users every time, scored as a full evaluation scores them."""

from __future__ import annotations

import dataclasses

import pandas as pd
import pytest

from calrec_core.data import read_examples
from calrec_core.train.stages import _Selector

CATEGORY = "Gift_Cards"


def test_sample_is_fixed_seeded_and_bounded(ingested_sample):
    everyone = read_examples(ingested_sample, CATEGORY, "valid")
    first = _Selector.selection_sample(ingested_sample, CATEGORY, 5, seed=0)
    again = _Selector.selection_sample(ingested_sample, CATEGORY, 5, seed=0)
    other = _Selector.selection_sample(ingested_sample, CATEGORY, 5, seed=1)
    ids = [e["user_id"] for e in first]
    assert ids == [e["user_id"] for e in again] == sorted(set(ids)) and len(ids) == 5
    assert ids != [e["user_id"] for e in other]
    assert set(ids) <= {e["user_id"] for e in everyone}
    # Not simply the first users in id order.
    assert ids != sorted(e["user_id"] for e in everyone)[:5]
    assert len(_Selector.selection_sample(ingested_sample, CATEGORY, 0, seed=0)) == len(everyone)


@pytest.fixture(scope="module")
def selector(ingested_sample):
    from calrec_core.model.sharding import make_mesh
    from calrec_core.train.batching import ExampleEncoder
    from calrec_core.train.config import TrainConfig
    from calrec_core.train.models import fresh_model
    from calrec_core.train.step import Trainer

    config = TrainConfig.tiny().replace(selection_metric="ndcg@10_pes", eval_max_users=5)
    model, tokenizer = fresh_model(config)
    trainer, params = Trainer.create(model, config, make_mesh(data=-1))
    encoder = ExampleEncoder(tokenizer, config.max_input_len, config.max_target_len)
    return _Selector(config, ingested_sample, [CATEGORY], trainer, tokenizer, encoder), params


def test_selection_metric_equals_full_evaluation_on_those_users(selector, ingested_sample,
                                                                tmp_path):
    from calrec_core.eval import EvalConfig, run_evaluation

    chosen, params = selector
    metrics = chosen._ranking_metrics(CATEGORY, params)
    assert chosen._score(CATEGORY, params) == metrics["ndcg@10_pes"]
    assert chosen._ranking_metrics(CATEGORY, params) == metrics  # same users, same samples
    assert metrics["num_users"] == 5
    # Reference: every validation user evaluated in one run, averaged over the sample.
    users = [e["user_id"] for e in
             _Selector.selection_sample(ingested_sample, CATEGORY, 5, chosen.config.seed)]
    config = dataclasses.replace(EvalConfig.tiny(), max_users=None, user_batch_size=4)
    run_evaluation(ingested_sample, CATEGORY, tmp_path / "all", methods=["calrec"],
                   split="valid", config=config,
                   model_and_tokenizer=(chosen.trainer.model(params), chosen.tokenizer),
                   show_progress=False)
    rows = pd.read_parquet(tmp_path / "all" / "predictions.parquet").set_index("user_id")
    for column in ("ndcg@10_pes", "ndcg@10_opt", "mrr_pes", "mrr_opt"):
        assert metrics[column] == pytest.approx(rows.loc[users, column].mean(), abs=1e-12)
    assert metrics["mrr_pes"] > 0  # a random model still ranks the targets somewhere

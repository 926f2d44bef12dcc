"""Capped evaluations score a seeded uniform sample of users, the same for every method."""

from __future__ import annotations

import numpy as np
import pandas as pd

from calrec_core.eval.config import EvalConfig
from calrec_core.user_sample import sample_users

USERS = [{"user_id": f"u{i:04d}"} for i in range(200)]


def _ids(records):
    return [r["user_id"] for r in records]


def test_the_sample_is_seeded_uniform_and_kept_in_id_order():
    shuffled = list(reversed(USERS))
    first = sample_users(shuffled, 20, seed=3, category="Office")
    assert _ids(first) == _ids(sample_users(USERS, 20, seed=3, category="Office"))
    assert _ids(first) == sorted(_ids(first)) and len(set(_ids(first))) == 20
    assert _ids(first) != _ids(sample_users(USERS, 20, seed=4, category="Office"))
    assert _ids(first) != _ids(sample_users(USERS, 20, seed=3, category="Pets"))
    assert _ids(first) != _ids(USERS[:20])  # not the first users by id
    # No cap, or a cap above the users: every user, by id.
    assert _ids(sample_users(shuffled, None, 0, "Office")) == _ids(USERS)
    assert _ids(sample_users(shuffled, 500, 0, "Office")) == _ids(USERS)
    # Uniform: over many seeds each user is drawn about 20 / 200 of the time, and the mean
    # position of a drawn user is the middle (a "first N" rule would fail both).
    counts = np.zeros(len(USERS))
    for seed in range(2000):
        for record in sample_users(USERS, 20, seed, "Office"):
            counts[int(record["user_id"][1:])] += 1
    expected = 2000 * 20 / 200
    chi2 = float(((counts - expected) ** 2 / expected).sum())
    assert chi2 < 280  # 199 degrees of freedom: p ~ 1e-4
    assert abs(np.average(np.arange(200), weights=counts) - 99.5) < 2


def test_every_method_of_a_capped_evaluation_scores_the_same_sampled_users(gift_cards_dir,
                                                                           tmp_path):
    from calrec_core.data import read_examples
    from calrec_core.eval.evaluate import run_evaluation

    config = EvalConfig.tiny()
    everyone = sorted(e["user_id"] for e in read_examples(gift_cards_dir, "Gift_Cards", "test"))
    assert len(everyone) > config.max_users
    scored = {}
    for method in ("lir", "calrec"):
        kwargs = {}
        if method == "calrec":
            from calrec_core.train.config import TrainConfig
            from calrec_core.train.models import fresh_model

            kwargs["model_and_tokenizer"] = fresh_model(TrainConfig.tiny())
        run_evaluation(gift_cards_dir, "Gift_Cards", tmp_path / method, methods=[method],
                       config=config, show_progress=False, **kwargs)
        rows = pd.read_parquet(tmp_path / method / "predictions.parquet")
        scored[method] = sorted(rows["user_id"])
    expected = _ids(sample_users([{"user_id": u} for u in everyone], config.max_users,
                                 config.seed, "Gift_Cards"))
    assert scored["lir"] == scored["calrec"] == expected
    assert expected != everyone[: config.max_users]

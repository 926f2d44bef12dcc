"""``calrec experiment``: configuration, budget planning, and the tiny preset end to end."""

from __future__ import annotations

import dataclasses
import json

import pandas as pd
import pytest
import yaml

from calrec_core.experiment.config import apply_overrides, load_experiment, preset
from calrec_core.experiment.plan import (
    Timings,
    make_plan,
    model_methods,
    stage1_runs,
    stage2_runs,
)


def test_overrides_convert_to_each_fields_type():
    config = apply_overrides(preset("tiny"), [
        "train.alpha=0", "eval.n_gen=8", "eval.max_users=none", "budget_minutes=2.5",
        "experiment.variants=calrec,no_stage2", "train.remat=true",
    ])
    assert config.train.alpha == 0.0 and isinstance(config.train.alpha, float)
    assert config.eval.n_gen == 8 and config.eval.max_users is None
    assert config.budget_minutes == 2.5 and config.variants == ("calrec", "no_stage2")
    assert config.train.remat is True
    # Everything else is the preset's.
    assert config.train.batch_size == preset("tiny").train.batch_size


@pytest.mark.parametrize("assignment, message", [
    ("train.alpah=0", "unknown field 'alpah'"),
    ("model.name=x", "section must be one of"),
    ("eval.n_gen=many", "n_gen='many'"),
    ("variants=calrec,bogus", "each must be one of"),
    ("alpha", "use section.field=value"),
])
def test_bad_overrides_name_the_problem(assignment, message):
    with pytest.raises(ValueError, match=message):
        apply_overrides(preset("tiny"), [assignment])


def test_a_config_file_round_trips(tmp_path):
    config = apply_overrides(preset("demo"), ["train.beta=-0.5", "eval.n_gen=2"])
    path = tmp_path / "experiment.yaml"
    path.write_text(yaml.safe_dump(config.to_dict()))
    assert load_experiment(path=path) == config
    # The CLI's --set applies after the file.
    assert load_experiment(path=path, overrides=["eval.n_gen=3"]).eval.n_gen == 3


def test_plan_fits_the_budget_and_uses_it():
    config = apply_overrides(preset("tiny"), ["budget_minutes=30", "train.eval_max_users=4",
                                              "train.stage1_steps=100000",
                                              "train.stage2_steps=100000",
                                              "train.selection_metric=ndcg@10_pes",
                                              "eval.max_users=none"])
    timings = Timings(step=0.5, compile=20.0, eval_user=1.5, elapsed=100.0)
    plan = make_plan(config, timings, available_users=1000)
    categories = len(config.eval_categories)
    users_seconds = plan.test_users * categories * len(model_methods(config)) * timings.eval_user
    runs = len(stage1_runs(config)) + len(stage2_runs(config)) * categories
    selection = config.selection_evals * 4 * timings.eval_user * categories
    steps = (len(stage1_runs(config)) * plan.stage1_steps
             + len(stage2_runs(config)) * categories * plan.stage2_steps)
    planned = (timings.elapsed + users_seconds + runs * (timings.compile + selection)
               + steps * timings.step)
    budget = config.budget_minutes * 60
    assert planned <= budget
    # Nearly all of it: less than one more step per run is left over.
    assert budget - planned < runs * timings.step + 1e-6 + categories * len(
        model_methods(config)) * timings.eval_user
    assert plan.test_users == int((budget - timings.elapsed) * (1 - config.train_share)
                                  / (categories * len(model_methods(config)) * 1.5))
    assert abs(plan.stage1_steps / (plan.stage1_steps + plan.stage2_steps)
               - config.stage1_share) < 0.01
    # Selection happens selection_evals times per run.
    assert plan.stage1_steps // plan.stage1_eval_every <= config.selection_evals


def test_plan_caps_users_at_those_available_and_refuses_a_hopeless_budget():
    config = apply_overrides(preset("tiny"), ["budget_minutes=30", "eval.max_users=none"])
    timings = Timings(step=0.5, compile=20.0, eval_user=1.5, elapsed=0.0)
    assert make_plan(config, timings, available_users=7).test_users == 7
    # The configured cap on users holds too.
    capped = apply_overrides(config, ["eval.max_users=5"])
    assert make_plan(capped, timings, available_users=7).test_users == 5
    tight = dataclasses.replace(config, budget_minutes=1.0)
    with pytest.raises(ValueError, match="budget of 1.0 min"):
        make_plan(tight, Timings(step=5.0, compile=50.0, eval_user=1.5, elapsed=0.0), 1000)


def test_tiny_experiment_end_to_end_resumes_and_refuses_other_settings(
        sample_dir, tmp_path, capsys):
    from calrec_core.cli import main

    output = tmp_path / "experiment"
    command = ["experiment", "--preset", "tiny", "--data", str(sample_dir),
               "--output", str(output), "--variants", "calrec,no_stage1",
               "--budget-minutes", "10"]
    assert main(command) == 0
    report = json.loads((output / "report.json").read_text())
    plan = report["plan"]
    # A generous budget: the preset's step counts and user cap bind.
    assert plan["estimate"]["train"] > 0
    assert (plan["stage1_steps"], plan["stage2_steps"], plan["test_users"]) == (6, 4, 6)
    assert (output / "report.md").is_file() and (output / "report.png").is_file()
    for category in ("Gift_Cards", "Magazine_Subscriptions"):
        result = report["categories"][category]
        # The fine-tuned model's two other rankings (the tiny preset's eval.rankings) sit
        # right beside its sampler.
        assert result["order"] == ["calrec", "calrec_constrained", "calrec_rerank",
                                   "no_stage1", "pretrained", "lir"]
        # Every method ranked the very same test users.
        users = {method: set(pd.read_parquet(
            output / "eval" / category / method / "predictions.parquet")["user_id"])
            for method in result["methods"]}
        assert len({frozenset(u) for u in users.values()}) == 1
        assert len(users["calrec"]) == plan["test_users"]
        assert set(result["t_tests"]) == {"calrec_constrained", "calrec_rerank", "no_stage1",
                                          "pretrained", "lir"}
    phases = report["timing"]
    assert {"ingest", "probe", "stage1/calrec", "stage2/Gift_Cards/no_stage1",
            "eval/Magazine_Subscriptions/lir"} <= set(phases)
    assert phases["stage1/calrec"]["steps"] == plan["stage1_steps"]
    assert phases["stage1/calrec"]["tokens_per_s"] > 0

    # A rerun resumes every phase and reproduces the report.
    assert main(command) == 0
    again = json.loads((output / "report.json").read_text())
    assert again["categories"] == report["categories"]

    # Other settings in the same folder are refused in one line.
    capsys.readouterr()
    assert main([*command, "--set", "train.alpha=0"]) == 1
    error = capsys.readouterr().err.strip()
    assert len(error.splitlines()) == 1 and "train.alpha" in error

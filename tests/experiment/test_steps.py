"""The steps `calrec experiment` and the pipeline components share (experiment/steps.py)."""

from __future__ import annotations

import dataclasses
import json

import pytest

from calrec_core.eval.config import EvalConfig
from calrec_core.experiment import ExperimentConfig, apply_overrides, preset
from calrec_core.experiment.steps import (
    check_compiled_categories,
    evaluate_methods,
    image_page,
    method_order,
    pipeline_views,
    render_report,
    stage_train_config,
    train_stage,
)

CATEGORIES = ("Gift_Cards", "Magazine_Subscriptions")


def _as_kfp_carries_it(value):
    """KFP's JSON parameters carry every number as a float."""
    if isinstance(value, dict):
        return {key: _as_kfp_carries_it(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_kfp_carries_it(item) for item in value]
    return float(value) if isinstance(value, int) and not isinstance(value, bool) else value


def test_each_variants_stage_config_follows_the_experiment_and_the_plan():
    config = apply_overrides(preset("tiny"), ["train.alpha=0.25", "train.lr_schedule=cosine",
                                              "train.warmup_steps=1", "train.lr_decay_steps=1"])
    first = stage_train_config(config, 1)
    assert (first.alpha, first.stage1_steps, first.eval_every) == (0.25, 6, 3)
    assert first.lr_decay_steps == 6 - 1  # a decaying schedule spans this stage's steps
    planned = stage_train_config(config, 2, "no_contrastive", steps=9, eval_every=2)
    assert (planned.alpha, planned.beta) == (0.0, 0.0)
    assert (planned.stage2_steps, planned.eval_every, planned.checkpoint_every) == (9, 2, 2)
    assert planned.lr_decay_steps == 8 and planned.log_every == 1
    with pytest.raises(ValueError, match="stage must be 1 or 2"):
        stage_train_config(config, 3)
    with pytest.raises(ValueError, match="unknown variant"):
        stage_train_config(config, 1, "no_training")


@pytest.mark.parametrize(("stage", "arguments", "message"), [
    (1, {"category": "Gift_Cards"}, "no category"),
    (2, {}, "needs the category"),
    (2, {"category": "Gift_Cards"}, "needs the Stage I model"),
    (2, {"category": "Gift_Cards", "init": "stage1", "variant": "no_stage1"}, "no init model"),
])
def test_train_stage_refuses_runs_that_do_not_match_the_variant(tmp_path, stage, arguments,
                                                                 message):
    with pytest.raises(ValueError, match=message):
        train_stage(preset("tiny"), stage, tmp_path / "data", tmp_path / "run", **arguments)
    assert not (tmp_path / "run").exists()


def test_pipeline_views_read_back_after_kfp_and_keep_training_apart_from_evaluation():
    config = apply_overrides(preset("tiny"), ["train.alpha=0.5", "baselines=lir"])
    views = _as_kfp_carries_it(pipeline_views(config))
    assert views["ingest"]["seed"] == float(config.roles.seed)
    train = ExperimentConfig.from_dict(views["train"])
    assert (train.train, train.roles) == (config.train, config.roles)
    # Model selection evaluates as the experiment's eval section says.
    assert train.selection_eval_config() == dataclasses.replace(
        config.eval, max_users=train.eval.max_users)
    evaluate = ExperimentConfig.from_dict(views["evaluate"])
    assert (evaluate.eval, evaluate.train, evaluate.baselines) == (
        config.eval, config.train, ("lir",))
    # A new test-user cap leaves the training view (its cache key) as it was; settings that
    # selection evaluates with do not.
    other = pipeline_views(apply_overrides(config, ["eval.max_users=3"]))
    assert other["train"] == pipeline_views(config)["train"]
    assert other["evaluate"] != pipeline_views(config)["evaluate"]
    assert (pipeline_views(apply_overrides(config, ["eval.n_gen=8"]))["train"]
            != pipeline_views(config)["train"])
    explicit = apply_overrides(config, ["selection_eval=demo", "eval.n_gen=8"])
    assert explicit.selection_eval_config() == EvalConfig.demo()


def test_compiled_categories_must_stay_eval_in_the_runs_experiment():
    config = preset("tiny")
    check_compiled_categories(config, list(CATEGORIES))
    roles = dataclasses.replace(config.roles, categories=(
        dataclasses.replace(config.roles.categories[0], role="pretrain"),
        *config.roles.categories[1:]))
    changed = dataclasses.replace(config, roles=roles)
    with pytest.raises(ValueError, match=r"\['Gift_Cards'\] no 'eval' role.*recompile"):
        check_compiled_categories(changed, list(CATEGORIES))


def test_method_order_puts_calrec_first_then_variants_then_baselines():
    assert method_order(["lir", "pretrained", "no_stage1", "calrec"]) == [
        "calrec", "no_stage1", "pretrained", "lir"]


@pytest.fixture(scope="module")
def ingested(tmp_path_factory, sample_dir, sample_config):
    from calrec_core.data import run_ingest

    output = tmp_path_factory.mktemp("ingested")
    run_ingest(str(sample_dir), str(sample_config), str(output))
    return output


def test_baselines_run_on_the_same_users_and_render_one_self_contained_report(ingested,
                                                                              tmp_path):
    config = apply_overrides(preset("tiny"), ["eval.max_users=6"])
    folders = []
    for category in reversed(CATEGORIES):  # the report orders categories itself
        evaluated = evaluate_methods(config, ingested, category, {}, tmp_path / category,
                                     max_users=3, show_progress=False)
        assert list(evaluated) == ["pretrained", "lir"]
        for label, evaluation in evaluated.items():
            result = json.loads((tmp_path / category / label / "metrics.json").read_text())
            assert evaluation.folder == str(tmp_path / category / label)
            assert evaluation.metrics["num_users"] == 3
            (method,) = result["methods"]
            assert method == ("lir" if label == "lir" else "calrec")
        folders.append(tmp_path / category)
    report = render_report(folders)
    assert report.markdown.index("## Gift_Cards") < report.markdown.index(
        "## Magazine_Subscriptions")
    assert "![metrics]" not in report.markdown and "| lir" in report.markdown
    assert "data:image/png;base64," in report.html and "<table" in report.html
    with pytest.raises(ValueError, match="no evaluations"):
        render_report([tmp_path / "missing"])


def test_plots_are_inlined_into_a_single_html_page(tmp_path):
    png = tmp_path / "plot.png"
    png.write_bytes(b"\x89PNG\r\n\x1a\nfake")
    page = image_page(png, "Losses <stage I>")
    assert "Losses &lt;stage I&gt;" in page
    assert "data:image/png;base64,iVBORw0KGgpmYWtl" in page

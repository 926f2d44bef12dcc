"""Evaluation step: one category's CALRec model and the experiment's baselines, ranked over the
full catalog."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output


def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    experiment: str,
    category: str,
    split: str,
    jax_cache_dir: str,
    checkpoint_root: str,
    pipeline_root: str,
    timeout_hours: float,
    machine: list,
    evaluation: Output[Dataset],
    evaluation_metrics: Output[Metrics],
    evaluation_report: Output[Markdown],
):
    """calrec_core.experiment.steps.evaluate_methods on the Stage II model and the experiment's
    baselines (``experiment``: its evaluation view, JSON text from the configure step), one
    run_evaluation folder per method under ``evaluation``. Evaluation keeps no state, so a
    retry starts over; ``timeout_hours`` bounds one attempt. ``machine`` (cpu, memory,
    accelerator type, count) is recorded in the metadata."""
    import dataclasses
    import json
    import os

    from calrec_core.experiment import ExperimentConfig
    from calrec_core.experiment.steps import evaluate_methods, render_report
    from components.runtime import (
        compilation_cache_dir,
        deadline,
        enable_compilation_cache,
        gcs_uri,
        log_numbers,
    )

    config = ExperimentConfig.from_dict(json.loads(experiment))
    enable_compilation_cache(compilation_cache_dir(jax_cache_dir, checkpoint_root,
                                                   pipeline_root))
    trained = gcs_uri(os.path.join(model.path, model.metadata["checkpoint_subdir"]))
    with deadline(timeout_hours, f"evaluate-{category}"):
        evaluated = evaluate_methods(config, gcs_uri(dataset.path), category,
                                     {"calrec": trained}, gcs_uri(evaluation.path), split=split)
    evaluation.metadata["category"] = category
    evaluation.metadata["split"] = split
    evaluation.metadata["machine"] = [str(value) for value in machine]
    evaluation.metadata["model"] = model.uri
    evaluation.metadata["selected_step"] = model.metadata.get("selected_step")
    evaluation.metadata["methods"] = list(evaluated)
    evaluation.metadata["config"] = dataclasses.asdict(config.eval)
    log_numbers(evaluation_metrics, {label: result.metrics
                                     for label, result in evaluated.items()})
    with open(evaluation_report.path, "w", encoding="utf-8") as stream:
        stream.write(render_report([gcs_uri(evaluation.path)]).markdown)

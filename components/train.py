"""Training step: Stage I (all categories jointly) or Stage II (one category from Stage I).

The Model artifact holds the exported selected model only. Resumable checkpoints (with the
optimizer state), metrics.jsonl and the TensorBoard events live in the run-scoped work
folder (components.runtime.work_dir), where a retried task resumes.
"""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output


def train(
    dataset: Input[Dataset],
    experiment: str,
    stage: int,
    checkpoint_root: str,
    pipeline_root: str,
    run_id: str,
    jax_cache_dir: str,
    timeout_hours: float,
    machine: list,
    model: Output[Model],
    training_metrics: Output[Metrics],
    loss_curves: Output[HTML],
    category: str = "",
    init_model: Input[Model] = None,
):
    """Stage ``stage`` of CALRec (§3.3) through calrec_core.experiment.steps.train_stage: Stage I
    on every category, or Stage II on ``category`` from ``init_model``. ``experiment`` is the
    experiment's training view (JSON text from the configure step); ``machine`` (cpu, memory,
    accelerator type, count) is what the task asked for, kept in the metadata (passing it also
    carries those parameters into the per-category loop)."""
    import json
    import os

    from calrec_core.experiment import ExperimentConfig
    from calrec_core.experiment.steps import (
        loss_curves_html,
        stage_name,
        stage_train_config,
        train_stage,
    )
    from calrec_core.train.metrics import TENSORBOARD_DIR
    from components.runtime import (
        compilation_cache_dir,
        deadline,
        enable_compilation_cache,
        export_model,
        gcs_uri,
        json_metadata,
        log_numbers,
        stage_summary,
        work_dir,
    )

    config = ExperimentConfig.from_dict(json.loads(experiment))
    task = stage_name(stage, category)
    work = work_dir(checkpoint_root, pipeline_root, run_id, task, model.path)
    enable_compilation_cache(compilation_cache_dir(jax_cache_dir, checkpoint_root,
                                                   pipeline_root))
    init = (os.path.join(init_model.path, init_model.metadata["checkpoint_subdir"])
            if init_model is not None else None)
    with deadline(timeout_hours, task):
        result = train_stage(config, stage, dataset.path, work, category=category or None,
                             init=init)
    export_model(result.checkpoint_dir, model.path)
    summary, selection = stage_summary(result)
    model.metadata["stage"] = stage
    if category:
        model.metadata["category"] = category
    if init_model is not None:
        model.metadata["init_model"] = init_model.uri
    model.metadata["machine"] = [str(value) for value in machine]
    model.metadata["config"] = json_metadata(stage_train_config(config, stage).to_dict())
    model.metadata["result"] = summary
    model.metadata["checkpoint_subdir"] = "."  # the artifact is the export itself
    model.metadata["selected_step"] = int(result.selected_step)
    model.metadata["work_dir"] = gcs_uri(str(work))
    model.metadata["tensorboard_logdir"] = gcs_uri(os.path.join(str(work), TENSORBOARD_DIR))
    log_numbers(training_metrics, selection)
    label = "stage I" if stage == 1 else f"stage II {category}"
    with open(loss_curves.path, "w", encoding="utf-8") as stream:
        stream.write(loss_curves_html(work, label))

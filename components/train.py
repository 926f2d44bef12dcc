"""Training steps: Stage I (all categories jointly) and Stage II (one category)."""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output


def train_stage1(
    dataset: Input[Dataset],
    preset: str,
    alpha: float,
    beta: float,
    temperature: float,
    learning_rate: float,
    batch_size: int,
    steps: int,
    overrides: list,
    model: Output[Model],
    training_metrics: Output[Metrics],
    loss_curves: Output[HTML],
):
    """Stage I of CALRec (§3.3): multi-category joint fine-tuning, selected on validation."""
    import os
    import tempfile

    from calrec_core.train import TrainConfig, plot_losses, run_stage1
    from components.runtime import (
        artifact_subpath,
        json_metadata,
        log_numbers,
        stage_summary,
        write_image_html,
    )

    config = TrainConfig.preset(preset).replace(
        alpha=alpha, beta=beta, temperature=temperature, learning_rate=learning_rate,
        batch_size=batch_size, stage1_steps=steps,
    ).with_overrides(overrides)
    result = run_stage1(dataset.path, model.path, config)
    summary, selection = stage_summary(result)
    model.metadata["stage"] = 1
    model.metadata["config"] = json_metadata(config.to_dict())
    model.metadata["result"] = summary
    model.metadata["checkpoint_subdir"] = artifact_subpath(result.checkpoint_dir, model.path)
    model.metadata["selected_step"] = int(result.selected_step)
    log_numbers(training_metrics, selection)
    with tempfile.TemporaryDirectory() as scratch:
        plot = plot_losses([model.path], os.path.join(scratch, "losses.png"), labels=["stage I"])
        write_image_html(plot, loss_curves.path, "Stage I training losses")


def train_stage2(
    dataset: Input[Dataset],
    init_model: Input[Model],
    category: str,
    preset: str,
    alpha: float,
    beta: float,
    temperature: float,
    learning_rate: float,
    batch_size: int,
    steps: int,
    overrides: list,
    model: Output[Model],
    training_metrics: Output[Metrics],
    loss_curves: Output[HTML],
):
    """Stage II of CALRec (§3.3): fine-tunes the Stage I model on one category."""
    import os
    import tempfile

    from calrec_core.train import TrainConfig, plot_losses, run_stage2
    from components.runtime import (
        artifact_subpath,
        json_metadata,
        log_numbers,
        stage_summary,
        write_image_html,
    )

    config = TrainConfig.preset(preset).replace(
        alpha=alpha, beta=beta, temperature=temperature, learning_rate=learning_rate,
        batch_size=batch_size, stage2_steps=steps,
    ).with_overrides(overrides)
    init_checkpoint = os.path.join(init_model.path, init_model.metadata["checkpoint_subdir"])
    result = run_stage2(dataset.path, category, init_checkpoint, model.path, config)
    summary, selection = stage_summary(result)
    model.metadata["stage"] = 2
    model.metadata["category"] = category
    model.metadata["init_model"] = init_model.uri
    model.metadata["config"] = json_metadata(config.to_dict())
    model.metadata["result"] = summary
    model.metadata["checkpoint_subdir"] = artifact_subpath(result.checkpoint_dir, model.path)
    model.metadata["selected_step"] = int(result.selected_step)
    log_numbers(training_metrics, selection)
    with tempfile.TemporaryDirectory() as scratch:
        plot = plot_losses([model.path], os.path.join(scratch, "losses.png"),
                           labels=[f"stage II {category}"])
        write_image_html(plot, loss_curves.path, f"Stage II training losses: {category}")

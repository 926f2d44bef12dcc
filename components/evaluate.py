"""Evaluation step: one category's CALRec model and its baselines, ranked over the full catalog."""

from kfp.dsl import Dataset, Input, Markdown, Metrics, Model, Output


def evaluate(
    dataset: Input[Dataset],
    model: Input[Model],
    category: str,
    preset: str,
    n_gen: int,
    n_preds: int,
    temperature: float,
    max_users: int,
    seed: int,
    split: str,
    baselines: list,
    evaluation: Output[Dataset],
    evaluation_metrics: Output[Metrics],
    evaluation_report: Output[Markdown],
):
    """Scores the Stage II model (method 'calrec') and the baselines of ``baselines``:
    'lir' (last item retrieval, no model) and 'pretrained' (the base LLM with the CALRec
    prompt, no fine-tuning). Writes one run_evaluation folder per model under ``evaluation``;
    ``max_users`` = 0 evaluates every user of the split.
    """
    import dataclasses
    import os

    from calrec_core.eval import EvalConfig, run_evaluation
    from components.runtime import log_numbers

    unknown = sorted(set(baselines) - {"lir", "pretrained"})
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; choose from ['lir', 'pretrained']")
    config = dataclasses.replace(
        EvalConfig.preset(preset), n_gen=n_gen, n_preds=n_preds, temperature=temperature,
        max_users=max_users or None, seed=seed,
    )
    checkpoint = os.path.join(model.path, model.metadata["checkpoint_subdir"])
    runs = {"trained": (checkpoint, ["calrec"] + (["lir"] if "lir" in baselines else []))}
    if "pretrained" in baselines:
        runs["pretrained"] = ("pretrained", ["calrec"])
    summaries = {}
    for run_name, (model_source, methods) in runs.items():
        result = run_evaluation(
            dataset.path, category, os.path.join(evaluation.path, run_name),
            model_source=model_source, methods=methods, split=split, config=config,
        )
        for method, metrics in result["methods"].items():
            label = method if method == "lir" else ("calrec" if run_name == "trained"
                                                     else run_name)
            summaries[label] = metrics
    evaluation.metadata["category"] = category
    evaluation.metadata["split"] = split
    evaluation.metadata["model"] = model.uri
    evaluation.metadata["selected_step"] = model.metadata.get("selected_step")
    evaluation.metadata["runs"] = sorted(runs)
    evaluation.metadata["config"] = dataclasses.asdict(config)
    log_numbers(evaluation_metrics, summaries)
    # The run's own summary, without its plot link (the plot stays in the evaluation folder).
    with open(os.path.join(evaluation.path, "trained", "report.md"), encoding="utf-8") as stream:
        summary_markdown = stream.read().replace("![metrics](metrics.png)", "")
    with open(evaluation_report.path, "w", encoding="utf-8") as stream:
        stream.write(summary_markdown.rstrip() + "\n")

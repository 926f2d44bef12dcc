"""Report step: one Table 2-style comparison across the evaluated categories."""

from kfp.dsl import HTML, Dataset, Input, Markdown, Model, Output


def report(
    evaluations: Input[list[Dataset]],
    stage1_model: Input[Model],
    stage2_models: Input[list[Model]],
    report: Output[Markdown],
    report_html: Output[HTML],
):
    """calrec_core.experiment.steps.render_report over every evaluation folder (the
    per-category fan-out collected, any number of categories): the Markdown tables, and an
    HTML page of the same tables with the score plot and the loss curves of the training runs
    (their work folders, from the models' metadata) inlined."""
    from calrec_core.experiment.steps import render_report

    if not evaluations:
        raise ValueError("the report step got no evaluations")
    runs = {"Stage I": stage1_model.metadata["work_dir"]}
    for model in stage2_models:
        runs[f"Stage II {model.metadata.get('category')}"] = model.metadata["work_dir"]
    rendered = render_report([evaluation.path for evaluation in evaluations], runs)
    with open(report.path, "w", encoding="utf-8") as stream:
        stream.write(rendered.markdown)
    with open(report_html.path, "w", encoding="utf-8") as stream:
        stream.write(rendered.html)
    categories = sorted(str(evaluation.metadata.get("category")) for evaluation in evaluations)
    report.metadata["categories"] = report_html.metadata["categories"] = categories
    report.metadata["evaluations"] = sorted(evaluation.uri for evaluation in evaluations)

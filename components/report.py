"""Report step: one Table 2-style comparison across the evaluated categories."""

from kfp.dsl import HTML, Dataset, Input, Markdown, Output


def report(
    evaluations: Input[list[Dataset]],
    report: Output[Markdown],
    report_html: Output[HTML],
):
    """calrec_core.experiment.steps.render_report over every evaluation folder (the
    per-category fan-out collected, any number of categories): the Markdown tables, and an
    HTML page with the plot inlined."""
    from calrec_core.experiment.steps import render_report

    if not evaluations:
        raise ValueError("the report step got no evaluations")
    rendered = render_report([evaluation.path for evaluation in evaluations])
    with open(report.path, "w", encoding="utf-8") as stream:
        stream.write(rendered.markdown)
    with open(report_html.path, "w", encoding="utf-8") as stream:
        stream.write(rendered.html)
    categories = sorted(str(evaluation.metadata.get("category")) for evaluation in evaluations)
    report.metadata["categories"] = report_html.metadata["categories"] = categories
    report.metadata["evaluations"] = sorted(evaluation.uri for evaluation in evaluations)

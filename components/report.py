"""Report step: one Table 2-style comparison across the evaluated categories."""

from kfp.dsl import HTML, Dataset, Input, Markdown, Output

# The report takes one optional input per category (KFP cannot collect a variable number of
# artifacts outside a ParallelFor, and the local runner's DAG is expanded when it is built).
MAX_REPORT_CATEGORIES = 8


def report(
    report: Output[Markdown],
    report_html: Output[HTML],
    evaluation_0: Input[Dataset] = None,
    evaluation_1: Input[Dataset] = None,
    evaluation_2: Input[Dataset] = None,
    evaluation_3: Input[Dataset] = None,
    evaluation_4: Input[Dataset] = None,
    evaluation_5: Input[Dataset] = None,
    evaluation_6: Input[Dataset] = None,
    evaluation_7: Input[Dataset] = None,
):
    """Writes the Markdown tables and an HTML page with the plot inlined, from every
    evaluation folder (each holds one run_evaluation output per model)."""
    import base64
    import glob
    import os
    import tempfile

    from calrec_core.eval import write_report

    evaluations = [evaluation for evaluation in (
        evaluation_0, evaluation_1, evaluation_2, evaluation_3,
        evaluation_4, evaluation_5, evaluation_6, evaluation_7,
    ) if evaluation is not None]
    if not evaluations:
        raise ValueError("the report step got no evaluations")
    # Per category the trained model comes first: the t-tests compare every method with it.
    metrics_paths = [
        path for evaluation in evaluations
        for path in sorted(glob.glob(os.path.join(evaluation.path, "*", "metrics.json")),
                           key=lambda path: (os.path.basename(os.path.dirname(path)) != "trained",
                                             path))
    ]
    with tempfile.TemporaryDirectory() as scratch:
        written = write_report(metrics_paths, scratch)
        plot_name = os.path.basename(written["plot"])
        with open(written["plot"], "rb") as stream:
            plot_uri = "data:image/png;base64," + base64.b64encode(stream.read()).decode("ascii")
        with open(written["markdown"], encoding="utf-8") as stream:
            # Artifact viewers show one file: the Markdown keeps the tables, the HTML the plot.
            markdown = stream.read().replace(f"![metrics]({plot_name})", "")
        with open(written["html"], encoding="utf-8") as stream:
            html = stream.read().replace(f"src='{plot_name}'", f"src='{plot_uri}'")
    with open(report.path, "w", encoding="utf-8") as stream:
        stream.write(markdown.rstrip() + "\n")
    with open(report_html.path, "w", encoding="utf-8") as stream:
        stream.write(html)
    report.metadata["categories"] = [evaluation.metadata.get("category") for evaluation in
                                     evaluations]
    report.metadata["evaluations"] = [evaluation.uri for evaluation in evaluations]
    report_html.metadata["categories"] = report.metadata["categories"]

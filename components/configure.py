"""Configure step: the run's experiment, validated once, as the view each later step reads."""

from typing import NamedTuple


def configure(experiment: dict, eval_categories: list) -> NamedTuple(
        "ExperimentViews", [("ingest", str), ("train", str), ("evaluate", str)]):
    """Reads the ``experiment`` parameter (steps.as_parameter, numbers as KFP's JSON carries
    them) and fails before any work on an invalid one, or on roles that do not make
    ``eval_categories`` (those the pipeline was compiled for) 'eval'. Each output is the part
    of the experiment one step reads (steps.pipeline_views), so that step's cache key changes
    only with what it uses. The views travel as JSON text: exact (integers stay integers),
    and KFP's local runner hands a dict output into a ParallelFor as a string."""
    import json

    from calrec_core.experiment import ExperimentConfig
    from calrec_core.experiment.steps import check_compiled_categories, pipeline_views

    config = ExperimentConfig.from_dict(experiment)
    check_compiled_categories(config, eval_categories)
    views = pipeline_views(config)
    return tuple(json.dumps(views[step], sort_keys=True)
                 for step in ("ingest", "train", "evaluate"))

"""``calrec experiment``: the paper's recipe end to end on one machine, within a time budget.

Ingest (or reuse), Stage I on the |U|^0.3 mixture, Stage II per eval category, then every
trained variant and baseline on the same test users, with paired t-tests and a timing table.
The configuration (roles, train, eval and the experiment's own fields) is one ExperimentConfig.
"""

from calrec_core.experiment.config import (
    ExperimentConfig,
    apply_overrides,
    load_experiment,
    preset,
)
from calrec_core.experiment.plan import Plan, Timings, make_plan
from calrec_core.experiment.run import run_experiment

__all__ = [
    "ExperimentConfig",
    "Plan",
    "Timings",
    "apply_overrides",
    "load_experiment",
    "make_plan",
    "preset",
    "run_experiment",
]

"""Sizing an experiment to a wall-clock budget from measured times.

The plan is arithmetic on four measurements (probe.py): the steady step time, the compile time of
a stage run, the evaluation time of one test user with one model, and what ingestion and the
probes already took. Stage runs and final evaluations then share the time left:

    test users  = eval share of the time left / (eval categories x model methods x user time)
    train time  = time left - final evaluations - per-run compiles - selection evaluations
    K           = train time / step time / (Stage I runs x s + Stage II runs x (1 - s))
    Stage I     = round(s x K) steps, each Stage II the steps left over    (s = stage1_share)

The step counts of the training config are upper bounds (the paper's 150k Stage I steps never
bind on one machine; a tiny run stops at its preset's), as is the evaluation's user cap.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from calrec_core.experiment.config import ExperimentConfig


@dataclasses.dataclass(frozen=True)
class Timings:
    """What the probes measured, in seconds."""

    step: float  # One optimizer step after compilation.
    compile: float  # Compilation (and first-step overheads) of one stage run.
    eval_user: float  # One test user with one model method (generation + BM25 + fusion).
    elapsed: float  # Already spent: ingestion and probes.


@dataclasses.dataclass(frozen=True)
class Plan:
    """Steps, selection cadence and test users of every run, with the time each phase gets."""

    stage1_steps: int  # Optimizer steps of each Stage I run.
    stage2_steps: int  # Optimizer steps of each Stage II run.
    stage1_eval_every: int  # Model-selection cadence of Stage I runs.
    stage2_eval_every: int  # Model-selection cadence of Stage II runs.
    test_users: int | None  # Test users per category (the same for every method); None = all.
    estimate: dict[str, float]  # Seconds planned per phase ("train", "eval", ...); {} unbudgeted.

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, values: dict[str, Any]) -> Plan:
        return cls(**values)


def stage1_runs(config: ExperimentConfig) -> list[str]:
    """Stage I runs the variants need: the contrastive one (shared by calrec and no_stage2) and
    the one without contrastive losses."""
    runs = []
    if {"calrec", "no_stage2"} & set(config.variants):
        runs.append("calrec")
    if "no_contrastive" in config.variants:
        runs.append("no_contrastive")
    return runs


def stage2_runs(config: ExperimentConfig) -> list[str]:
    """Stage II runs per eval category (no_stage2 evaluates the Stage I model instead)."""
    return [v for v in config.variants if v != "no_stage2"]


def model_methods(config: ExperimentConfig) -> list[str]:
    """Methods that sample from a model, per eval category."""
    return [*config.variants, *[b for b in config.baselines if b == "pretrained"]]


def selection_categories(config: ExperimentConfig) -> int:
    validation = [c for c in config.roles.categories if c.role == "validation"]
    return len(validation) or len(config.eval_categories)


def unbudgeted_plan(config: ExperimentConfig) -> Plan:
    train = config.train
    return Plan(train.stage1_steps, train.stage2_steps, train.eval_every, train.eval_every,
                config.eval.max_users, {})


def make_plan(config: ExperimentConfig, timings: Timings, available_users: int) -> Plan:
    """The plan that fits ``config.budget_minutes`` (module docstring); fails clearly when the
    budget cannot even cover one step per run and two test users."""
    if config.budget_minutes <= 0:
        return unbudgeted_plan(config)
    left = config.budget_minutes * 60.0 - timings.elapsed
    categories = len(config.eval_categories)
    per_user = categories * len(model_methods(config)) * timings.eval_user
    cap = available_users if config.eval.max_users is None else min(
        available_users, config.eval.max_users)
    users = cap if per_user <= 0 else min(cap, int(left * (1 - config.train_share) / per_user))
    if users < min(2, cap):
        raise ValueError(
            f"budget of {config.budget_minutes} min leaves {left:.0f} s after ingestion and "
            f"probes: not enough to evaluate 2 test users ({per_user:.1f} s each)")
    eval_seconds = users * per_user

    first, second = stage1_runs(config), stage2_runs(config) * categories
    runs = len(first) + len(second)
    selection_users = config.train.eval_max_users or 0
    selection_each = (config.selection_evals * selection_users * timings.eval_user
                      * selection_categories(config)
                      if config.train.selection_metric == "ndcg@10_pes" else 0.0)
    overhead = runs * (timings.compile + selection_each)
    train_seconds = left - eval_seconds - overhead
    # The configured step counts are upper bounds; time a capped stage leaves goes to the other.
    cap1, cap2 = config.train.stage1_steps, config.train.stage2_steps
    total_steps = train_seconds / max(timings.step, 1e-9)
    share = config.stage1_share if first else 0.0
    weight = len(first) * share + len(second) * (1 - share)
    chain = total_steps / weight if weight else 0.0
    stage1 = min(cap1, max(1, round(share * chain))) if first else cap1
    stage2 = min(cap2, int((total_steps - len(first) * (stage1 if first else 0)) / len(second)))
    if train_seconds <= 0 or stage2 < 1:
        raise ValueError(
            f"budget of {config.budget_minutes} min is too small: {left:.0f} s left, "
            f"{eval_seconds:.0f} s for evaluating {users} users, {overhead:.0f} s for "
            f"{runs} compiles and selections, {timings.step:.2f} s per step")
    return Plan(
        stage1_steps=stage1,
        stage2_steps=stage2,
        stage1_eval_every=max(1, math.ceil(stage1 / config.selection_evals)),
        stage2_eval_every=max(1, math.ceil(stage2 / config.selection_evals)),
        test_users=users,
        estimate={"left": left, "train": train_seconds, "eval": eval_seconds,
                  "compile_and_selection": overhead},
    )

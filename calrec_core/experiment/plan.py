"""Sizing an experiment to a wall-clock budget from measured times.

The plan is arithmetic on what the probe measured (run.py): the steady step time, the compile
time of one step program, the steady evaluation time of one user with one model method, the
one-time set-up of an evaluation (model load, BM25 build, decode compiles), and what ingestion
and the probe already took. Every second of the budget is given to one of:

    spent        ingestion and the probe (measured)
    compiles     one per distinct step program not compiled yet (runs of one stage and one
                 loss setting share programs through the persistent compilation cache; a
                 stage run compiles up to PROGRAMS_PER_RUN of them, the probe's are done)
    eval_setup   one-time costs of every final and selection evaluation, and of every stage
                 run (model load, checkpoint, export)
    selection    selection evaluations: runs x evaluations x users x per-user time, priced
                 with the settings selection really evaluates with (selection_eval)
    test_eval    the final evaluations: users x categories x model methods x per-user time
    train        optimizer steps: the rest

Selection shrinks first (fewer evaluations per run, then fewer users, down to one evaluation
of MIN_SELECTION_USERS users per run) until it takes at most SELECTION_SHARE of what is left
after one-time costs; the final evaluation gets at most (1 - train_share) of the rest and
training everything else. The step counts of the training config are upper bounds (the
paper's 150k Stage I steps never bind on one machine; a tiny run stops at its preset's), as
is the evaluation's user cap. A budget that cannot hold one step per run, one selection of
MIN_SELECTION_USERS users per run and two test users is refused in one line naming what does
not fit.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from calrec_core.experiment.config import ExperimentConfig

# Step programs one stage run may compile (the packed levels of calrec_core.train.shapes; the
# fallback holds only batches no packed level holds and is not planned for).
PROGRAMS_PER_RUN = 2
# Most of the time left after one-time costs that selection may take before it shrinks.
SELECTION_SHARE = 0.04
# Fewest validation users a selection evaluation scores.
MIN_SELECTION_USERS = 16


@dataclasses.dataclass(frozen=True)
class Timings:
    """What the probe measured, in seconds."""

    step: float  # One optimizer step of a compiled program (steady state).
    compile: float  # Compiling one step program (the first step of a new shape minus a step).
    eval_user: float  # One test user with one model method (generation + BM25 + fusion), steady.
    elapsed: float  # Already spent: ingestion and probes.
    eval_setup: float = 0.0  # One-time costs of one evaluation: model load, BM25, compiles.
    run_setup: float = 0.0  # One stage run's own costs besides steps: load, checkpoint, export.
    programs_compiled: int = 1  # Step programs the probe compiled (kept in the cache).


@dataclasses.dataclass(frozen=True)
class Plan:
    """Steps, selection cadence and test users of every run, with the time each phase gets."""

    stage1_steps: int  # Optimizer steps of each Stage I run.
    stage2_steps: int  # Optimizer steps of each Stage II run.
    stage1_eval_every: int  # Model-selection cadence of Stage I runs.
    stage2_eval_every: int  # Model-selection cadence of Stage II runs.
    test_users: int | None  # Test users per category (the same for every method); None = all.
    estimate: dict[str, float]  # Seconds planned per phase ("train", "test_eval", ...).
    selection_users: int | None = None  # Validation users per selection (None: the config's).
    # TrainConfig settings every stage run (and the probe) takes: resolved microbatches and
    # remat, the experiment's shared step shapes, shared_program ({} = none).
    train_overrides: dict[str, Any] = dataclasses.field(default_factory=dict)

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


def train_programs(config: ExperimentConfig, shared: bool = False) -> int:
    """Distinct step programs the stage runs compile, PROGRAMS_PER_RUN per set: one set per
    stage and loss setting (no_contrastive skips the item tower), or, ``shared`` (one ladder
    of step shapes for both stages, loss weights as step inputs: run.py's packed budgeted
    experiments), one set for all runs."""
    if shared:
        return PROGRAMS_PER_RUN
    families = {(1, run == "no_contrastive") for run in stage1_runs(config)}
    families |= {(2, run == "no_contrastive") for run in stage2_runs(config)}
    return len(families) * PROGRAMS_PER_RUN


def selection_user_seconds(config: ExperimentConfig, eval_user: float) -> float:
    """One selection user's time: the test user's, scaled by the samples and tokens decoded
    with the settings selection evaluates with against the test evaluation's."""
    chosen, test = config.selection_eval_config(), config.eval
    return eval_user * (chosen.n_gen * chosen.max_new_tokens) / (test.n_gen * test.max_new_tokens)


def make_plan(config: ExperimentConfig, timings: Timings, available_users: int,
              train_overrides: dict[str, Any] | None = None) -> Plan:
    """The plan that fits ``config.budget_minutes`` (module docstring); ``train_overrides``
    (shared step shapes, shared_program) are what every stage run will take."""
    train_overrides = dict(train_overrides or {})
    shared = bool(train_overrides.get("step_shapes")) and bool(
        train_overrides.get("shared_program"))
    if config.budget_minutes <= 0:
        return unbudgeted_plan(config)
    budget = config.budget_minutes * 60.0
    left = budget - timings.elapsed
    categories = len(config.eval_categories)
    first, second = stage1_runs(config), stage2_runs(config) * categories
    runs = len(first) + len(second)
    programs = train_programs(config, shared)
    compiles = max(0, programs - timings.programs_compiled) * timings.compile
    methods = len(model_methods(config))
    per_user = categories * methods * timings.eval_user
    # Final evaluations: one per method and category; selection: one per run.
    selecting = config.train.selection_metric == "ndcg@10_pes"
    setups = (categories * methods + (runs if selecting else 0)) * timings.eval_setup
    setups += runs * timings.run_setup
    one_time = compiles + setups

    # Selection: as configured, then fewer evaluations, then fewer users, within its share.
    sel_user = selection_user_seconds(config, timings.eval_user) * selection_categories(config)
    sel_users = config.train.eval_max_users or available_users
    sel_evals = config.selection_evals
    floor_users = min(sel_users, MIN_SELECTION_USERS)
    room = SELECTION_SHARE * max(0.0, left - one_time)

    def selection_cost(evals: int, users: int) -> float:
        return runs * evals * users * sel_user if selecting else 0.0

    while selecting and selection_cost(sel_evals, sel_users) > room and sel_evals > 1:
        sel_evals -= 1
    if selecting and selection_cost(sel_evals, sel_users) > room:
        sel_users = max(floor_users, int(room / max(runs * sel_evals * sel_user, 1e-9)))
    selection = selection_cost(sel_evals, sel_users)

    cap = available_users if config.eval.max_users is None else min(
        available_users, config.eval.max_users)
    rest = left - one_time - selection
    minimal = (one_time + selection_cost(1, floor_users) + min(2, cap) * per_user
               + runs * timings.step)
    if left < minimal:
        raise ValueError(
            f"budget of {config.budget_minutes} min is too small: {left:.0f} s are left after "
            f"{timings.elapsed:.0f} s spent, but {compiles:.0f} s of compiles, {setups:.0f} s "
            f"of evaluation set-up, {selection_cost(1, floor_users):.0f} s of minimal "
            f"selection, {min(2, cap) * per_user:.0f} s for 2 test users and one "
            f"{timings.step:.2f} s step for each of {runs} runs need {minimal:.0f} s")
    users = cap if per_user <= 0 else min(
        cap, max(min(2, cap), int(rest * (1 - config.train_share) / per_user)))
    test_eval = users * per_user
    train_seconds = rest - test_eval
    # The configured step counts are upper bounds; time a capped stage leaves goes to the other.
    cap1, cap2 = config.train.stage1_steps, config.train.stage2_steps
    total_steps = train_seconds / max(timings.step, 1e-9)
    share = config.stage1_share if first else 0.0
    weight = len(first) * share + len(second) * (1 - share)
    chain = total_steps / weight if weight else 0.0
    stage1 = min(cap1, max(1, round(share * chain))) if first else cap1
    stage2 = min(cap2, max(1, int((total_steps - len(first) * (stage1 if first else 0))
                                  / len(second))))
    planned_train = (len(first) * (stage1 if first else 0) + len(second) * stage2) * timings.step
    return Plan(
        stage1_steps=stage1,
        stage2_steps=stage2,
        stage1_eval_every=max(1, math.ceil(stage1 / sel_evals)),
        stage2_eval_every=max(1, math.ceil(stage2 / sel_evals)),
        test_users=users,
        selection_users=sel_users if selecting else None,
        train_overrides=train_overrides,
        estimate={
            "budget": budget, "spent": timings.elapsed, "compiles": compiles,
            "eval_setup": setups, "selection": selection, "test_eval": test_eval,
            "train": planned_train, "unplanned": left - one_time - selection - test_eval
            - planned_train, "train_share_of_budget": planned_train / budget,
            "step_programs": float(programs),
            "selection_evals_per_run": float(sel_evals),
        },
    )

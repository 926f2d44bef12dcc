"""One experiment configuration: category roles, training, evaluation and the run's own plan.

An experiment is built from a named preset (``tiny``, ``demo``, ``paper``), then an optional YAML
file, then ``--set section.field=value`` overrides, in that order::

    preset: demo                  # optional in a file; the CLI's --preset wins over it
    roles: {seed: 1, categories: {Office_Products: {role: eval}}}
    train: {batch_size: 64, compute_dtype: bfloat16}
    eval: {n_gen: 32}
    experiment: {budget_minutes: 10}

Sections are ``roles`` (a roles mapping as in configs/*.yaml, or the path of such a file relative
to the experiment file), ``train`` (TrainConfig fields),
``eval`` (EvalConfig fields) and ``experiment`` (ExperimentConfig's own fields below).
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Iterable, Mapping
from typing import Any

import yaml

from calrec_core.data.config import (
    RolesConfig,
    load_roles_config,
    roles_config_from_dict,
    roles_preset,
)
from calrec_core.eval.config import EvalConfig
from calrec_core.overrides import check_preset, parse_assignments, replace_typed
from calrec_core.train.config import TrainConfig

# Trained variants an experiment can compare (paper Table 3 rows).
VARIANTS = (
    "calrec",  # Stage I then Stage II, with both contrastive losses (the method).
    "no_contrastive",  # Both stages with alpha = beta = 0 ("w/o Contrastive Alignment").
    "no_stage1",  # Stage II from the pretrained weights ("w/o Multi-Category Joint FT", A).
    "no_stage2",  # The Stage I model on each category ("w/o Category-Specific FT", B).
)
BASELINES = ("pretrained", "lir")  # Untrained references (Table 3's last row, LIR of Table 2).


@dataclasses.dataclass(frozen=True)
class ExperimentConfig:
    """Everything ``calrec experiment`` needs besides its raw data and output folders."""

    # Which categories feed Stage I, select Stage I and are evaluated (data/config.py).
    roles: RolesConfig
    # Training of every stage run; each variant derives its own from it.
    train: TrainConfig
    # Evaluation of every method; the same test users for all of them.
    eval: EvalConfig
    # The preset this experiment started from (reports name it).
    preset: str = "paper"
    # Wall-clock budget of the whole experiment in minutes; 0 = no budget, the step counts of
    # `train` are used as they are. With a budget, steps and test users are sized from measured
    # step and evaluation times (see plan.py).
    budget_minutes: float = 0.0
    # Share of the time left after ingestion, probes, compiles and selection that goes to
    # training (the rest to the final evaluations; see plan.py).
    train_share: float = 0.6
    # Share of a Stage I + Stage II chain's steps that Stage I gets under a budget.
    stage1_share: float = 0.5
    # Model-selection evaluations per stage run under a budget (eval_every = steps / this).
    selection_evals: int = 4
    # How selection evaluates: "eval" = with this experiment's `eval` section (one place for
    # evaluation settings), or an EvalConfig preset name ("tiny", "demo", "paper").
    selection_eval: str = "eval"
    # Trained variants, in report order (VARIANTS); "calrec" is the one the others compare to.
    variants: tuple[str, ...] = ("calrec", "no_contrastive", "no_stage1")
    # Untrained baselines (BASELINES).
    baselines: tuple[str, ...] = ("pretrained", "lir")
    # Optimizer steps timed before planning (the first includes compilation).
    probe_steps: int = 3
    # Test users timed with the pretrained model before planning.
    probe_users: int = 4
    # Metric whose per-user values the paired t-tests compare.
    test_metric: str = "ndcg@10_pes"

    def __post_init__(self) -> None:
        problems = []
        unknown = [v for v in self.variants if v not in VARIANTS]
        if unknown or len(set(self.variants)) != len(self.variants):
            problems.append(f"variants {list(self.variants)}: each must be one of {VARIANTS}")
        unknown = [b for b in self.baselines if b not in BASELINES]
        if unknown or len(set(self.baselines)) != len(self.baselines):
            problems.append(f"baselines {list(self.baselines)}: each must be one of {BASELINES}")
        if not self.variants and not self.baselines:
            problems.append("nothing to compare: no variants and no baselines")
        if self.budget_minutes < 0:
            problems.append("budget_minutes must be >= 0")
        for name in ("train_share", "stage1_share"):
            if not 0 < getattr(self, name) < 1:
                problems.append(f"{name} must be in (0, 1)")
        for name in ("selection_evals", "probe_steps", "probe_users"):
            if getattr(self, name) < 1:
                problems.append(f"{name} must be >= 1")
        if self.selection_eval not in ("eval", "tiny", "demo", "paper"):
            problems.append(f"selection_eval must be 'eval' or a preset name, got "
                            f"{self.selection_eval!r}")
        if self.probe_steps < 2:
            problems.append("probe_steps must be >= 2 (the first step includes compilation)")
        if not [c for c in self.roles.categories if c.role == "eval"]:
            problems.append("the roles name no eval category to test on")
        if problems:
            raise ValueError("invalid experiment config: " + "; ".join(problems))

    def selection_eval_config(self) -> EvalConfig:
        """The EvalConfig model selection samples and fuses with (its users are the training
        config's eval_max_users sample, whatever max_users says)."""
        if self.selection_eval == "eval":
            return self.eval
        return EvalConfig.preset(self.selection_eval)

    @property
    def eval_categories(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.roles.categories if c.role == "eval")

    def to_dict(self) -> dict[str, Any]:
        """Plain data (YAML/JSON) that ``from_dict`` reads back."""
        own = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)
               if f.name not in ("roles", "train", "eval", "preset")}
        own["variants"], own["baselines"] = list(self.variants), list(self.baselines)
        return {
            "preset": self.preset,
            "roles": roles_to_dict(self.roles),
            "train": dataclasses.asdict(self.train),
            "eval": dataclasses.asdict(self.eval),
            "experiment": own,
        }

    @classmethod
    def from_dict(cls, values: Mapping[str, Any]) -> ExperimentConfig:
        return apply_sections(preset(values.get("preset", "paper")), values)


def roles_to_dict(roles: RolesConfig) -> dict[str, Any]:
    return {
        "seed": roles.seed,
        "mixture_exponent": roles.mixture_exponent,
        "records_per_shard": roles.records_per_shard,
        "categories": {c.name: {"role": c.role, "user_sample_rate": c.user_sample_rate}
                       for c in roles.categories},
    }


def preset(name: str) -> ExperimentConfig:
    """The named experiment: roles, training and evaluation presets of the same name."""
    check_preset(name)
    train = TrainConfig.preset(name)
    evaluation = EvalConfig.preset(name)
    own: dict[str, Any] = {}
    if name == "tiny":
        own = {"probe_steps": 2, "probe_users": 2}
    elif name == "demo":
        # Two CPU cores: one variant besides the baselines keeps `make demo` in minutes.
        own = {"variants": ("calrec",), "probe_steps": 2, "probe_users": 2}
    return ExperimentConfig(roles=roles_preset(name), train=train, eval=evaluation, preset=name,
                            **own)


def load_experiment(preset_name: str | None = None, path=None,
                    overrides: Iterable[str] = (), default_preset: str = "paper",
                    ) -> ExperimentConfig:
    """Preset, then the YAML file at ``path`` (if any), then ``section.field=value`` overrides.
    The preset is ``preset_name``, else the file's, else ``default_preset``."""
    values: dict[str, Any] = {}
    if path is not None:
        path = pathlib.Path(path)
        if not path.is_file():
            raise ValueError(f"experiment config {path} is not a file")
        try:
            values = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
        except (UnicodeDecodeError, yaml.YAMLError) as error:
            raise ValueError(f"{path}: not a readable YAML file ({error})") from None
        if not isinstance(values, dict):
            raise ValueError(f"{path}: expected a mapping with roles/train/eval/experiment")
    name = preset_name or values.get("preset") or default_preset
    config = apply_sections(preset(name), values, source=str(path or "config"))
    return apply_overrides(config, overrides)


_SECTIONS = ("preset", "roles", "train", "eval", "experiment")


def apply_sections(config: ExperimentConfig, values: Mapping[str, Any],
                   source: str = "config") -> ExperimentConfig:
    unknown = sorted(set(values) - set(_SECTIONS))
    if unknown:
        raise ValueError(f"{source}: unknown sections {unknown}; allowed {list(_SECTIONS)}")
    changes: dict[str, Any] = {}
    roles = values.get("roles")
    if isinstance(roles, str):
        # A roles file, relative to the experiment file that names it.
        base = pathlib.Path(source).parent if pathlib.Path(source).is_file() else pathlib.Path()
        changes["roles"] = load_roles_config(base / roles)
    elif roles is not None:
        changes["roles"] = roles_config_from_dict(roles, source=f"{source}: roles")
    for section in ("train", "eval"):
        if values.get(section):
            changes[section] = replace_typed(getattr(config, section), values[section],
                                              f"{source}: {section}")
    config = dataclasses.replace(config, **changes)
    if values.get("experiment"):
        config = replace_typed(config, values["experiment"], f"{source}: experiment",
                                exclude=("roles", "train", "eval", "preset"))
    return config


def apply_overrides(config: ExperimentConfig, assignments: Iterable[str]) -> ExperimentConfig:
    """``section.field=value`` strings (``train.alpha=0``, ``eval.n_gen=8``,
    ``experiment.budget_minutes=10`` or plain ``budget_minutes=10``); roles come from a roles
    file (--roles) or the config file."""
    grouped = parse_assignments(assignments, ("train", "eval", "experiment"),
                                default_section="experiment")
    return apply_sections(config, grouped, source="--set")

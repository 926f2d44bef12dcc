"""Category roles (CALRec §4): which categories feed which stage, from a YAML file.

``pretrain`` categories give whole sequences to Stage I; ``validation`` holds out each user's
last item for Stage I model selection; ``eval`` trains on items 1..n-2, validates on n-1 and
tests on n. ``user_sample_rate`` keeps a hash-chosen share of a large category's users.
"""

from __future__ import annotations

import dataclasses
import math

import yaml

from calrec_core.data.mixture import PAPER_EXPONENT
from calrec_core.overrides import check_preset

ROLES = ("pretrain", "validation", "eval")
# Splits each role writes, and the fewest deduplicated events a user needs for them.
SPLITS_BY_ROLE = {
    "pretrain": ("train",),
    "validation": ("train", "valid"),
    "eval": ("train", "valid", "test"),
}
MIN_EVENTS_BY_ROLE = {"pretrain": 2, "validation": 2, "eval": 3}


@dataclasses.dataclass(frozen=True)
class CategoryRole:
    """One category's role in the experiment."""

    name: str  # File stem as published, e.g. "Office_Products" (Office_Products_5.json.gz).
    role: str  # One of ROLES.
    user_sample_rate: float = 1.0  # Share of users kept (hash of seed and user id), in (0, 1].

    def __post_init__(self):
        if not self.name or "/" in self.name:
            raise ValueError(f"bad category name {self.name!r}")
        if self.role not in ROLES:
            raise ValueError(f"category {self.name}: role {self.role!r} is not one of {ROLES}")
        rate = self.user_sample_rate
        if isinstance(rate, bool) or not isinstance(rate, (int, float)) or not 0 < rate <= 1:
            raise ValueError(f"category {self.name}: user_sample_rate {rate!r} not in (0, 1]")

    @property
    def splits(self) -> tuple[str, ...]:
        return SPLITS_BY_ROLE[self.role]

    @property
    def min_events(self) -> int:
        return MIN_EVENTS_BY_ROLE[self.role]


@dataclasses.dataclass(frozen=True)
class RolesConfig:
    """Everything ingestion needs besides the input and output folders."""

    categories: tuple[CategoryRole, ...]  # In config order; names are unique.
    seed: int = 0  # Seeds the per-user sampling hash; same seed => same users.
    mixture_exponent: float = PAPER_EXPONENT  # Stage I weight of a category: |U| ** this (§3.3).
    records_per_shard: int = 20_000  # Examples per TFRecord shard (shard count follows).

    def __post_init__(self):
        names = [category.name for category in self.categories]
        if not names:
            raise ValueError("the config names no categories")
        duplicates = sorted({name for name in names if names.count(name) > 1})
        if duplicates:
            raise ValueError(f"categories named twice: {duplicates}")
        if isinstance(self.seed, bool) or not isinstance(self.seed, int):
            raise ValueError(f"seed must be an integer, got {self.seed!r}")
        if not (isinstance(self.mixture_exponent, (int, float)) and
                math.isfinite(self.mixture_exponent)):
            raise ValueError(f"mixture_exponent must be a number, got {self.mixture_exponent!r}")
        if not isinstance(self.records_per_shard, int) or self.records_per_shard < 1:
            raise ValueError("records_per_shard must be a positive integer")

    def category(self, name: str) -> CategoryRole:
        for category in self.categories:
            if category.name == name:
                return category
        raise KeyError(name)


_TOP_KEYS = {"seed", "categories", "mixture_exponent", "records_per_shard"}
_CATEGORY_KEYS = {"role", "user_sample_rate"}


def roles_config_from_dict(raw: object, source: str = "config") -> RolesConfig:
    """Validates a parsed YAML mapping; errors name the source and the offending key."""
    if not isinstance(raw, dict):
        raise ValueError(f"{source}: expected a mapping at the top level")
    unknown = sorted(set(raw) - _TOP_KEYS)
    if unknown:
        raise ValueError(f"{source}: unknown keys {unknown}; allowed {sorted(_TOP_KEYS)}")
    categories_raw = raw.get("categories")
    if not isinstance(categories_raw, dict) or not categories_raw:
        raise ValueError(f"{source}: 'categories' must map category names to their roles")
    categories = []
    for name, spec in categories_raw.items():
        if not isinstance(spec, dict):
            raise ValueError(f"{source}: category {name}: expected a mapping with 'role'")
        unknown = sorted(set(spec) - _CATEGORY_KEYS)
        if unknown:
            raise ValueError(f"{source}: category {name}: unknown keys {unknown}")
        if "role" not in spec:
            raise ValueError(f"{source}: category {name}: missing 'role'")
        try:
            categories.append(CategoryRole(str(name), spec["role"],
                                           spec.get("user_sample_rate", 1.0)))
        except ValueError as error:
            raise ValueError(f"{source}: {error}") from None
    try:
        return RolesConfig(
            categories=tuple(categories),
            seed=_integral(raw.get("seed", 0)),
            mixture_exponent=raw.get("mixture_exponent", PAPER_EXPONENT),
            records_per_shard=_integral(raw.get("records_per_shard", 20_000)),
        )
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def _integral(value):
    """An integral float as an int: JSON pipeline parameters (KFP) carry every number as one."""
    return int(value) if isinstance(value, float) and value.is_integer() else value


def load_roles_config(path) -> RolesConfig:
    """Reads and validates a roles YAML file (see configs/sample.yaml); errors name the file."""
    try:
        with open(path, encoding="utf-8") as stream:
            raw = yaml.safe_load(stream)
    except FileNotFoundError:
        raise FileNotFoundError(f"roles config {path} not found") from None
    except IsADirectoryError:
        raise ValueError(f"roles config {path} is a folder, not a YAML file") from None
    except UnicodeDecodeError as error:
        raise ValueError(f"roles config {path} is not UTF-8 text ({error.reason} at byte "
                         f"{error.start})") from None
    except yaml.YAMLError as error:
        message = " ".join(str(error).split())
        raise ValueError(f"{path}: not valid YAML: {message}") from None
    return roles_config_from_dict(raw, source=str(path))


def _paper_categories() -> tuple[CategoryRole, ...]:
    # The 14 categories of Li et al. (Recformer) as CALRec §4 assigns them.
    pretrain = (
        "Automotive", "Cell_Phones_and_Accessories", "Clothing_Shoes_and_Jewelry",
        "Electronics", "Grocery_and_Gourmet_Food", "Home_and_Kitchen", "Movies_and_TV",
    )
    evaluation = (
        ("Industrial_and_Scientific", 1.0), ("Musical_Instruments", 1.0),
        ("Arts_Crafts_and_Sewing", 1.0), ("Office_Products", 0.5), ("Video_Games", 1.0),
        ("Pet_Supplies", 0.2),
    )
    return (
        *(CategoryRole(name, "pretrain") for name in pretrain),
        CategoryRole("CDs_and_Vinyl", "validation"),
        *(CategoryRole(name, "eval", rate) for name, rate in evaluation),
    )


_SAMPLE = (CategoryRole("Gift_Cards", "eval"), CategoryRole("Magazine_Subscriptions", "eval"))
PRESETS = {
    # The bundled two-category sample, tiny shards so sharding is exercised.
    "tiny": RolesConfig(categories=_SAMPLE, seed=20240101, records_per_shard=128),
    "demo": RolesConfig(categories=_SAMPLE, seed=20240101),
    "paper": RolesConfig(categories=_paper_categories(), seed=20240101),
}


def roles_preset(name: str) -> RolesConfig:
    return PRESETS[check_preset(name)]

"""configs/paper.yaml is the paper's experiment (§4): the same roles as the Python preset,
checked against the paper's own numbers, and every raw file it expects is named in it."""

from __future__ import annotations

import pathlib
import re

from calrec_core.data.config import load_roles_config, roles_preset

PAPER_YAML = pathlib.Path(__file__).resolve().parents[2] / "configs" / "paper.yaml"


def test_paper_yaml_equals_the_paper_preset():
    assert load_roles_config(PAPER_YAML) == roles_preset("paper")


def test_paper_roles_follow_section_4():
    config = load_roles_config(PAPER_YAML)
    by_role = {}
    for category in config.categories:
        by_role.setdefault(category.role, []).append(category.name)
    # 14 categories: 7 for Stage I only, 'CDs and Vinyl' for selection, 6 evaluated.
    assert len(config.categories) == 14
    assert len(by_role["pretrain"]) == 7
    assert by_role["validation"] == ["CDs_and_Vinyl"]
    assert sorted(by_role["eval"]) == sorted([
        "Industrial_and_Scientific", "Musical_Instruments", "Arts_Crafts_and_Sewing",
        "Office_Products", "Video_Games", "Pet_Supplies"])
    # 50 % of Office and 20 % of Pet users, every other category whole.
    rates = {c.name: c.user_sample_rate for c in config.categories if c.user_sample_rate != 1}
    assert rates == {"Office_Products": 0.5, "Pet_Supplies": 0.2}
    assert config.mixture_exponent == 0.3


def test_documented_bucket_layout_names_every_category_file():
    config = load_roles_config(PAPER_YAML)
    listed = set(re.findall(r"\b(?:meta_)?\w+?(?:_5)?\.json\.gz\b", PAPER_YAML.read_text()))
    expected = {f"{c.name}_5.json.gz" for c in config.categories}
    expected |= {f"meta_{c.name}.json.gz" for c in config.categories}
    assert expected <= listed, sorted(expected - listed)

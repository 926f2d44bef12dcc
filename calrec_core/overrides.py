"""Presets and ``--set section.field=value`` overrides, shared by every command and config.

Every configuration (roles, train, eval, the experiment) starts from one of the same three named
presets and changes fields with one syntax: ``--set train.alpha=0``, ``--set eval.n_gen=8``.
A command whose configuration is a single section also takes the bare field (``--set alpha=0``).
Values are converted to the field's annotated type (int, float, bool, str, optional, tuple).
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Iterable, Mapping
from typing import Any

# The named starting points of every configuration: a random tiny model for tests, the real model
# sized for a 2-core CPU, and the paper's §4 settings.
PRESETS = ("tiny", "demo", "paper")


def check_preset(name: str) -> str:
    if name not in PRESETS:
        raise ValueError(f"unknown preset {name!r}; choose one of {list(PRESETS)}")
    return name


def parse_assignments(assignments: Iterable[str], sections: Iterable[str],
                      default_section: str | None = None) -> dict[str, dict[str, str]]:
    """{section: {field: raw value}} of ``section.field=value`` strings; a bare ``field=value``
    goes to ``default_section`` (when there is one)."""
    sections = tuple(sections)
    grouped: dict[str, dict[str, str]] = {}
    for assignment in assignments:
        key, sep, raw = assignment.partition("=")
        section, dot, field = key.strip().rpartition(".")
        if not sep or not field:
            raise ValueError(f"bad override {assignment!r}: use section.field=value")
        if not dot:
            if default_section is None:
                raise ValueError(f"bad override {assignment!r}: name the section, one of "
                                 f"{list(sections)} (e.g. {sections[0]}.{field}=...)")
            section = default_section
        if section not in sections:
            raise ValueError(f"bad override {assignment!r}: section must be one of "
                             f"{list(sections)} here")
        grouped.setdefault(section, {})[field] = raw.strip()
    return grouped


def replace_typed(instance, values: Mapping[str, Any], source: str, exclude: Iterable[str] = ()):
    """``dataclasses.replace`` with each value converted to its field's annotated type; unknown
    fields and invalid values fail with one line naming ``source`` and the field."""
    if not isinstance(values, Mapping):
        raise ValueError(f"{source}: expected a mapping of field: value")
    fields = {f.name for f in dataclasses.fields(instance)} - set(exclude)
    hints = typing.get_type_hints(type(instance))
    changes = {}
    for name, raw in values.items():
        if name not in fields:
            known = ", ".join(sorted(fields))
            raise ValueError(f"{source}: unknown field {name!r}; known: {known}")
        try:
            changes[name] = convert(hints[name], raw)
        except (TypeError, ValueError) as error:
            raise ValueError(f"{source}: {name}={raw!r}: {error}") from None
    try:
        return dataclasses.replace(instance, **changes)
    except ValueError as error:
        raise ValueError(f"{source}: {error}") from None


def apply_section_overrides(instance, assignments: Iterable[str], section: str):
    """Overrides of a single-section config (``section.field=value`` or ``field=value``)."""
    grouped = parse_assignments(assignments, [section], default_section=section)
    if not grouped:
        return instance
    return replace_typed(instance, grouped[section], f"--set {section}")


def convert(kind, raw):
    """``raw`` (a YAML value or a CLI string) as an instance of the annotation ``kind``."""
    origin, args = typing.get_origin(kind), typing.get_args(kind)
    if origin in (typing.Union, types.UnionType):
        empty = raw is None or (isinstance(raw, str) and raw.lower() in ("none", "null", ""))
        if empty and type(None) in args:
            return None
        return convert(next(arg for arg in args if arg is not type(None)), raw)
    if origin is tuple:
        items = raw.split(",") if isinstance(raw, str) else list(raw)
        return tuple(convert(args[0], item.strip() if isinstance(item, str) else item)
                     for item in items if item != "")
    if kind is bool:
        if isinstance(raw, bool):
            return raw
        if str(raw).lower() not in ("true", "false", "1", "0"):
            raise ValueError(f"expected true or false, got {raw!r}")
        return str(raw).lower() in ("true", "1")
    if kind is int:
        if isinstance(raw, bool) or (isinstance(raw, float) and not raw.is_integer()):
            raise ValueError(f"expected an integer, got {raw!r}")
        return int(float(raw)) if isinstance(raw, str) and "e" in raw.lower() else int(raw)
    if kind is float:
        return float(raw)
    if kind is str:
        return str(raw)
    return raw


def add_preset_arguments(parser, section: str, default: str | None = "paper") -> None:
    """``--preset`` (with choices) and ``--set`` as every command spells them."""
    shown = f" (default {default})" if default else ""
    parser.add_argument("--preset", choices=PRESETS, default=default,
                        help=f"named starting point: tiny, demo or paper{shown}")
    parser.add_argument("--set", action="append", default=[], metavar=f"{section}.FIELD=VALUE",
                        help=f"override one {section} setting, e.g. --set {section}.seed=1 "
                        "(repeatable; the bare FIELD=VALUE works too)")

"""The import graph runs one way: text formats -> data, model -> eval -> train -> experiment
-> the CLI -> components -> pipelines. Lazy imports inside functions count too."""

from __future__ import annotations

import ast
import pathlib

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
# Lowest first; a module may import its own layer and the ones before it.
LAYERS = (
    ("calrec_core.errors", "calrec_core.fingerprint", "calrec_core.folder_lock",
     "calrec_core.item_text", "calrec_core.lazy", "calrec_core.overrides", "calrec_core.storage",
     "calrec_core.template", "calrec_core.user_sample"),
    ("calrec_core.data",),
    ("calrec_core.model",),
    ("calrec_core.eval",),
    ("calrec_core.train",),
    ("calrec_core.experiment",),
    ("calrec_core.cli", "calrec_core.cli_logs", "calrec_core"),
    ("components",),
    ("pipelines",),
)
# The single CLI lists every area's subcommands, pipelines' included, by name (importlib).
ALLOWED = {("calrec_core.cli", "pipelines.cli")}


def _layer(module: str) -> int | None:
    best = None
    for index, prefixes in enumerate(LAYERS):
        for prefix in prefixes:
            matches = module == prefix or module.startswith(prefix + ".")
            # "calrec_core" itself names only the package's __init__ (it re-exports).
            if matches and (prefix != "calrec_core" or module == "calrec_core"):
                best = index if best is None else max(best, index)
    return best


def _modules():
    for package in ("calrec_core", "components", "pipelines"):
        for path in sorted((REPO / package).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            yield name.removesuffix(".__init__"), path


def _imports(path: pathlib.Path):
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            # ``from package import module`` imports the module, not the package's __init__.
            for alias in node.names:
                submodule = f"{node.module}.{alias.name}"
                parts = REPO.joinpath(*submodule.split("."))
                is_module = parts.with_suffix(".py").is_file() or (parts / "__init__.py").is_file()
                yield submodule if is_module else node.module
        elif isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)


def test_every_module_belongs_to_a_layer():
    assert [name for name, _ in _modules() if _layer(name) is None] == []


def _upward_edges(modules) -> list[str]:
    upward = []
    for name, path in modules:
        for target in _imports(path):
            target_layer = _layer(target)
            if target_layer is not None and target_layer > _layer(name) and (
                    name, target) not in ALLOWED:
                upward.append(f"{name} -> {target}")
    return upward


def test_no_module_imports_a_higher_layer():
    assert _upward_edges(_modules()) == []


def test_the_checker_sees_a_lazy_upward_import(tmp_path):
    # The circle this test guards against: eval importing train inside a function.
    fake = tmp_path / "evaluate.py"
    fake.write_text("import numpy\n\ndef f():\n    from calrec_core.train import stages\n")
    assert _upward_edges([("calrec_core.eval.evaluate", fake)]) == [
        "calrec_core.eval.evaluate -> calrec_core.train.stages"]
    assert _upward_edges([("calrec_core.experiment.run", fake)]) == []


@pytest.mark.parametrize("package", ["calrec_core"])
def test_the_core_imports_no_kfp_or_cloud_sdk(package):
    banned = ("kfp", "google.cloud", "google_cloud_pipeline_components")
    found = [f"{name} -> {target}" for name, path in _modules() if name.startswith(package)
             for target in _imports(path) if target.startswith(banned)]
    assert found == []


def test_the_pipeline_client_compiles_without_the_accelerator_stack(tmp_path):
    """The pipelines' client image holds KFP and the Vertex SDK but no JAX, Beam or scipy:
    building the experiment configuration and compiling the pipeline must not import them."""
    import subprocess
    import sys

    blocked = {"jax", "jaxlib", "flax", "optax", "orbax", "scipy", "pandas", "pyarrow",
               "apache_beam", "rank_bm25", "tokenizers", "gguf", "safetensors", "matplotlib",
               "google_crc32c", "torch", "transformers"}
    script = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {sorted(blocked)!r}:
            raise ImportError("blocked in the client image: " + name)
sys.meta_path.insert(0, Block())
from calrec_core.cli import main
sys.exit(main(["pipeline", "compile", "--preset", "paper", "--set", "train.alpha=0",
               "--allow-placeholder-image", "--output", {str(tmp_path / "p.yaml")!r}]))
"""
    done = subprocess.run([sys.executable, "-c", script], cwd=REPO, capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-2000:]
    assert (tmp_path / "p.yaml").is_file()


def test_every_cli_option_has_help_and_every_preset_has_choices():
    import argparse

    from calrec_core.cli import build_parser

    missing, free_presets = [], []

    def walk(parser, path):
        for action in parser._actions:
            if isinstance(action, argparse._SubParsersAction):
                for name, sub in action.choices.items():
                    walk(sub, f"{path} {name}")
            elif not isinstance(action, argparse._HelpAction):
                if not action.help:
                    missing.append(f"{path} {action.dest}")
                if action.dest == "preset" and not action.choices:
                    free_presets.append(path)

    walk(build_parser(), "calrec")
    assert missing == [] and free_presets == []

"""Compiles the pipeline to the KFP IR YAML that Vertex AI Pipelines runs."""

from __future__ import annotations

import pathlib

from pipelines.dag import BuildOptions


def compile_pipeline(options: BuildOptions, output_path, *,
                     allow_placeholder_image: bool = False) -> pathlib.Path:
    """Writes the pipeline spec for ``options`` to ``output_path`` (.yaml); returns the path.

    Refuses images that still name the placeholder project (a spec nobody can run) unless
    ``allow_placeholder_image`` (e.g. to inspect the spec).
    """
    from kfp import compiler

    output_path = pathlib.Path(output_path)
    if output_path.suffix not in (".yaml", ".yml"):
        raise ValueError(f"{output_path}: the pipeline spec is written as .yaml")
    placeholders = options.images.placeholders(options.accelerator)
    if placeholders and not allow_placeholder_image:
        raise ValueError(
            f"the steps would run on placeholder images {placeholders}: pass --registry "
            "REGISTRY --tag TAG (or set CALREC_INGEST_IMAGE, CALREC_IMAGE, CALREC_CUDA_IMAGE, "
            "CALREC_TPU_IMAGE), or --allow-placeholder-image to compile anyway"
        )
    output_path.parent.mkdir(parents=True, exist_ok=True)
    compiler.Compiler().compile(options.build(), package_path=str(output_path))
    return output_path


def load_pipeline_spec(path) -> dict:
    """Reads a compiled spec back through the KFP SDK (which validates its structure)."""
    from kfp.components import load_component_from_file

    load_component_from_file(str(path))  # raises on a spec the SDK cannot load
    import yaml

    with open(path, encoding="utf-8") as stream:
        return yaml.safe_load(stream)

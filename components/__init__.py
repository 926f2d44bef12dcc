"""KFP components: thin wrappers that hand typed artifacts to calrec_core's steps.

The plain functions live one per module; ``make_components`` turns them into KFP components
on given images (the project's own images carry the package, so nothing is pip-installed at
run time and the local subprocess runner executes the very same code).
"""

from __future__ import annotations

import dataclasses

from components.evaluate import evaluate
from components.images import (
    ACCELERATOR_IMAGE,
    CALREC_CUDA_IMAGE,
    CALREC_IMAGE,
    CALREC_TPU_IMAGE,
    IMAGE_EXTRAS,
    IMAGE_JAX_EXTRA,
    ImageSet,
)
from components.ingest import ingest
from components.report import MAX_REPORT_CATEGORIES, report
from components.train import train_stage1, train_stage2


@dataclasses.dataclass(frozen=True)
class Components:
    """One KFP component per pipeline step."""

    ingest: object  # raw files -> Dataset (Beam; Dataflow when beam_args say so)
    train_stage1: object  # Dataset -> Stage I Model
    train_stage2: object  # Dataset + Stage I Model -> one category's Model
    evaluate: object  # Dataset + Model -> one category's evaluation folder and Metrics
    report: object  # evaluation folders -> Table 2-style Markdown and HTML


def make_components(images: ImageSet | None = None, accelerator: str = "cpu") -> Components:
    """Components on ``images``; training and evaluation use the ``accelerator`` image."""
    from kfp import dsl

    images = images or ImageSet()
    heavy_image = images.for_accelerator(accelerator)

    def on(image: str, function):
        return dsl.component(function, base_image=image, install_kfp_package=False)

    return Components(
        ingest=on(images.cpu, ingest),
        train_stage1=on(heavy_image, train_stage1),
        train_stage2=on(heavy_image, train_stage2),
        evaluate=on(heavy_image, evaluate),
        report=on(images.cpu, report),
    )


__all__ = [
    "ACCELERATOR_IMAGE",
    "CALREC_CUDA_IMAGE",
    "CALREC_IMAGE",
    "CALREC_TPU_IMAGE",
    "IMAGE_EXTRAS",
    "IMAGE_JAX_EXTRA",
    "MAX_REPORT_CATEGORIES",
    "Components",
    "ImageSet",
    "evaluate",
    "ingest",
    "make_components",
    "report",
    "train_stage1",
    "train_stage2",
]

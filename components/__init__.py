"""KFP components: thin wrappers that hand typed artifacts to calrec_core's steps.

The plain functions live one per module; ``make_components`` turns them into KFP components
on given images (the project's own images carry the package, so nothing is pip-installed at
run time and the local subprocess runner executes the very same code).
"""

from __future__ import annotations

import dataclasses

from components.configure import configure
from components.data_version import raw_data_version
from components.evaluate import evaluate
from components.images import (
    ACCELERATOR_IMAGE,
    CALREC_CUDA_IMAGE,
    CALREC_IMAGE,
    CALREC_INGEST_IMAGE,
    CALREC_TPU_IMAGE,
    IMAGE_COMPONENTS,
    IMAGE_EXTRAS,
    IMAGE_JAX_EXTRA,
    ImageSet,
)
from components.ingest import ingest
from components.report import report
from components.train import train


@dataclasses.dataclass(frozen=True)
class Components:
    """One KFP component per pipeline step."""

    configure: object  # experiment parameter -> validated view of it per step
    raw_data_version: object  # raw-data URI -> content version (never cached)
    ingest: object  # imported raw data -> Dataset (Beam; Dataflow when beam_args say so)
    train: object  # Dataset (+ Stage I Model) -> Stage I Model or one category's Model
    evaluate: object  # Dataset + Model -> one category's evaluation folder and Metrics
    report: object  # collected evaluation folders -> Table 2-style Markdown and HTML


def make_components(images: ImageSet | None = None, accelerator: str = "cpu") -> Components:
    """Components on ``images``; training and evaluation use the ``accelerator`` image."""
    from kfp import dsl

    images = images or ImageSet()
    heavy_image = images.for_accelerator(accelerator)

    def on(image: str, function):
        return dsl.component(function, base_image=image, install_kfp_package=False)

    return Components(
        configure=on(images.cpu, configure),
        raw_data_version=on(images.ingest, raw_data_version),
        ingest=on(images.ingest, ingest),
        train=on(heavy_image, train),
        evaluate=on(heavy_image, evaluate),
        report=on(images.cpu, report),
    )


__all__ = [
    "ACCELERATOR_IMAGE",
    "CALREC_CUDA_IMAGE",
    "CALREC_IMAGE",
    "CALREC_INGEST_IMAGE",
    "CALREC_TPU_IMAGE",
    "IMAGE_COMPONENTS",
    "IMAGE_EXTRAS",
    "IMAGE_JAX_EXTRA",
    "Components",
    "ImageSet",
    "configure",
    "evaluate",
    "ingest",
    "make_components",
    "raw_data_version",
    "report",
    "train",
]

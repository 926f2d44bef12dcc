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
    STEP_ACCELERATOR,
    TPU_STEP_REFUSAL,
    ImageSet,
)
from components.ingest import ingest
from components.report import report
from components.train import train, train_custom_job

# Where training runs: inside the task's container (one host), or as a Vertex AI custom job
# the task launches and waits for (several hosts; components.custom_job).
TRAINING_MODES = ("container", "custom_job")


@dataclasses.dataclass(frozen=True)
class Components:
    """One KFP component per pipeline step."""

    configure: object  # experiment parameter -> validated view of it per step
    raw_data_version: object  # raw-data URI -> content version (never cached)
    ingest: object  # imported raw data -> Dataset (Beam; Dataflow when beam_args say so)
    # Dataset (+ Stage I Model) -> Stage I Model or one category's Model (in the container,
    # or launched as a custom job: then with the launcher's inputs and gcp_resources output)
    train: object
    evaluate: object  # Dataset + Model -> one category's evaluation folder and Metrics
    report: object  # collected evaluation folders -> Table 2-style Markdown and HTML


def make_components(images: ImageSet | None = None, accelerator: str = "cpu",
                    training: str = "container") -> Components:
    """Components on ``images``; training and evaluation use the ``accelerator`` image, except
    that ``training="custom_job"`` launches training from the CPU image (the job's workers
    run the ``accelerator`` image), and that on "tpu" evaluation runs on the CUDA image
    (pipeline steps get no TPUs: STEP_ACCELERATOR) and training must be a custom job."""
    from kfp import dsl

    if training not in TRAINING_MODES:
        raise ValueError(f"unknown training {training!r}; choose one of {list(TRAINING_MODES)}")
    images = images or ImageSet()
    heavy_image = images.for_step(accelerator)
    if training == "container" and STEP_ACCELERATOR[accelerator] != accelerator:
        raise ValueError(TPU_STEP_REFUSAL)

    def on(image: str, function):
        return dsl.component(function, base_image=image, install_kfp_package=False)

    return Components(
        configure=on(images.cpu, configure),
        raw_data_version=on(images.ingest, raw_data_version),
        ingest=on(images.ingest, ingest),
        train=(on(heavy_image, train) if training == "container"
               else on(images.cpu, train_custom_job)),
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
    "STEP_ACCELERATOR",
    "TPU_STEP_REFUSAL",
    "TRAINING_MODES",
    "Components",
    "ImageSet",
    "configure",
    "evaluate",
    "ingest",
    "make_components",
    "raw_data_version",
    "report",
    "train",
    "train_custom_job",
]

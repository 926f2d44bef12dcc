"""Container images the components run on, and what each one installs.

Components are Python functions shipped inside the project's own images (the package is
pip-installed there), so the same function runs in KFP's local subprocess runner and in a
container on Vertex AI. Each image serves one group of steps and installs only that group's
setup.py extras, pinned by its own hash lock (``docker/locks/<image>.txt``), so one group's
dependencies (e.g. Beam's) never constrain another's. Cloud Build builds every image from
``docker/<image>.Dockerfile`` and compiles the pipeline with their ``$COMMIT_SHA`` tags.
"""

from __future__ import annotations

import dataclasses
import os

# Artifact Registry repository the images are pushed to (a placeholder until one is named).
DEFAULT_REGISTRY = "us-docker.pkg.dev/PROJECT/calrec"
PLACEHOLDER_PROJECT = "/PROJECT/"

# Image name -> setup.py extras it installs.
IMAGE_EXTRAS = {
    "calrec-ingest": ("data", "components"),
    # "launch": the training launcher of custom-job training (components.custom_job).
    "calrec": ("train", "eval", "components", "launch"),
    "calrec-cuda": ("train", "eval", "components"),
    "calrec-tpu": ("train", "eval", "components"),
}
# Image name -> JAX flavour installed on top ("" for the CPU wheels the extras bring).
IMAGE_JAX_EXTRA = {"calrec-ingest": "", "calrec": "", "calrec-cuda": "cuda12", "calrec-tpu": "tpu"}
# Image name -> component modules it runs (Cloud Build imports each inside the image).
IMAGE_COMPONENTS = {
    "calrec-ingest": ("components.data_version", "components.ingest"),
    "calrec": ("components.configure", "components.train", "components.evaluate",
               "components.report"),
    "calrec-cuda": ("components.train", "components.evaluate"),
    "calrec-tpu": ("components.train", "components.evaluate"),
}
# The client lock (compile, submit, upload) is no image: Cloud Build installs it in a venv.
CLIENT_LOCK_EXTRAS = ("pipelines",)

# Which image runs the heavy steps (training, generation) for each accelerator choice.
ACCELERATOR_IMAGE = {"cpu": "calrec", "gpu": "calrec-cuda", "tpu": "calrec-tpu"}
# The accelerator a pipeline step (evaluation, container training) gets for each choice.
# Vertex AI Pipelines gives a step CPUs, memory and GPUs ("Specify the machine configuration
# for a pipeline step"), never a TPU: TPUs come with custom jobs only, so a "tpu" build trains
# on TPU custom jobs (components.custom_job) and evaluates in a GPU step.
STEP_ACCELERATOR = {"cpu": "cpu", "gpu": "gpu", "tpu": "gpu"}
# Why a "tpu" build cannot train in its own pipeline step (one line, at compile time).
TPU_STEP_REFUSAL = ("Vertex AI pipeline steps get no TPUs (CPUs, memory and GPUs only): TPU "
                    "training runs as a Vertex AI custom job, compile with --training "
                    "custom_job (training=\"custom_job\")")

CALREC_INGEST_IMAGE = os.environ.get("CALREC_INGEST_IMAGE",
                                     f"{DEFAULT_REGISTRY}/calrec-ingest:latest")
CALREC_IMAGE = os.environ.get("CALREC_IMAGE", f"{DEFAULT_REGISTRY}/calrec:latest")
CALREC_CUDA_IMAGE = os.environ.get("CALREC_CUDA_IMAGE", f"{DEFAULT_REGISTRY}/calrec-cuda:latest")
CALREC_TPU_IMAGE = os.environ.get("CALREC_TPU_IMAGE", f"{DEFAULT_REGISTRY}/calrec-tpu:latest")


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Fully qualified image references, one per image in IMAGE_EXTRAS."""

    ingest: str = CALREC_INGEST_IMAGE  # Raw-data version and ingestion (Beam).
    cpu: str = CALREC_IMAGE  # Report, and training and evaluation of a CPU run.
    cuda: str = CALREC_CUDA_IMAGE  # Training and evaluation on NVIDIA GPUs (jax[cuda12]).
    tpu: str = CALREC_TPU_IMAGE  # Training and evaluation on Cloud TPU (jax[tpu]).

    @classmethod
    def tagged(cls, registry: str, tag: str) -> ImageSet:
        """Every image of ``registry`` at one tag (Cloud Build passes the commit SHA)."""
        registry = registry.rstrip("/")
        return cls(ingest=f"{registry}/calrec-ingest:{tag}", cpu=f"{registry}/calrec:{tag}",
                   cuda=f"{registry}/calrec-cuda:{tag}", tpu=f"{registry}/calrec-tpu:{tag}")

    def for_accelerator(self, accelerator: str) -> str:
        """The image that runs training and evaluation on ``accelerator`` (cpu, gpu, tpu)."""
        if accelerator not in ACCELERATOR_IMAGE:
            raise ValueError(
                f"unknown accelerator {accelerator!r}; choose one of {sorted(ACCELERATOR_IMAGE)}"
            )
        return {"cpu": self.cpu, "gpu": self.cuda, "tpu": self.tpu}[accelerator]

    def for_step(self, accelerator: str) -> str:
        """The image of a build's accelerated pipeline steps (STEP_ACCELERATOR: the CUDA image
        for a TPU build, whose TPUs only its custom jobs get)."""
        self.for_accelerator(accelerator)  # the one-line refusal of an unknown accelerator
        return self.for_accelerator(STEP_ACCELERATOR[accelerator])

    def placeholders(self, accelerator: str) -> list[str]:
        """The images a build on ``accelerator`` would use that still name the placeholder
        project (nobody can pull them)."""
        used = (self.ingest, self.cpu, self.for_accelerator(accelerator),
                self.for_step(accelerator))
        return sorted({image for image in used if PLACEHOLDER_PROJECT in image})

"""Container images the components run on, and what each one installs.

Components are Python functions shipped inside the project's own images (the package is
pip-installed there), so the same function runs in KFP's local subprocess runner and in a
container on Vertex AI. Cloud Build builds every image below from ``docker/<name>.Dockerfile``
and compiles the pipeline with the ``$COMMIT_SHA`` tags through these environment variables.
"""

from __future__ import annotations

import dataclasses
import os

# Artifact Registry repository the images are pushed to (Cloud Build substitutes the project).
DEFAULT_REGISTRY = "us-docker.pkg.dev/PROJECT/calrec"

# Image name -> setup.py extras it installs (and the JAX flavour, "" for the CPU wheels).
IMAGE_EXTRAS = {
    "calrec": ("data", "train", "eval", "pipelines"),
    "calrec-cuda": ("train", "eval", "pipelines"),
    "calrec-tpu": ("train", "eval", "pipelines"),
}
IMAGE_JAX_EXTRA = {"calrec": "", "calrec-cuda": "cuda12", "calrec-tpu": "tpu"}

# Which image runs the heavy steps (training, generation) for each accelerator choice.
ACCELERATOR_IMAGE = {"cpu": "calrec", "gpu": "calrec-cuda", "tpu": "calrec-tpu"}

CALREC_IMAGE = os.environ.get("CALREC_IMAGE", f"{DEFAULT_REGISTRY}/calrec:latest")
CALREC_CUDA_IMAGE = os.environ.get("CALREC_CUDA_IMAGE", f"{DEFAULT_REGISTRY}/calrec-cuda:latest")
CALREC_TPU_IMAGE = os.environ.get("CALREC_TPU_IMAGE", f"{DEFAULT_REGISTRY}/calrec-tpu:latest")


@dataclasses.dataclass(frozen=True)
class ImageSet:
    """Fully qualified image references, one per image in IMAGE_EXTRAS."""

    cpu: str = CALREC_IMAGE  # Ingest, report, and every step of a CPU run.
    cuda: str = CALREC_CUDA_IMAGE  # Training and evaluation on NVIDIA GPUs (jax[cuda12]).
    tpu: str = CALREC_TPU_IMAGE  # Training and evaluation on Cloud TPU (jax[tpu]).

    @classmethod
    def tagged(cls, registry: str, tag: str) -> ImageSet:
        """Every image of ``registry`` at one tag (Cloud Build passes the commit SHA)."""
        registry = registry.rstrip("/")
        return cls(cpu=f"{registry}/calrec:{tag}", cuda=f"{registry}/calrec-cuda:{tag}",
                   tpu=f"{registry}/calrec-tpu:{tag}")

    def for_accelerator(self, accelerator: str) -> str:
        """The image that runs training and evaluation on ``accelerator`` (cpu, gpu, tpu)."""
        if accelerator not in ACCELERATOR_IMAGE:
            raise ValueError(
                f"unknown accelerator {accelerator!r}; choose one of {sorted(ACCELERATOR_IMAGE)}"
            )
        return {"cpu": self.cpu, "gpu": self.cuda, "tpu": self.tpu}[accelerator]

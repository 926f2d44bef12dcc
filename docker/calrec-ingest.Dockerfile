# Raw-data version and ingestion steps (Apache Beam), and the Dataflow workers' image.
# Build from the repository root:  docker build -f docker/calrec-ingest.Dockerfile -t calrec-ingest .
#
# Dataflow starts every worker container with /opt/apache/beam/boot (its custom-container
# guide: boot must run as the last step of container start-up). The Beam wheel does not ship
# it, so it comes from Beam's own SDK image of the pinned Beam version (apache-beam in the
# pinned set and docker/locks/calrec-ingest.txt; tests/pipelines/test_cloud_images.py checks
# all three agree) for the same Python minor as the base below.
FROM apache/beam_python3.11_sdk:2.77.0 AS beam_sdk

FROM python:3.11.7-slim-bookworm

# RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT: boot would otherwise build a virtual environment
# under /opt at every worker start; everything the workers import is installed globally below.
ENV PYTHONDONTWRITEBYTECODE=1 \
    PYTHONUNBUFFERED=1 \
    PIP_NO_CACHE_DIR=1 \
    PIP_DISABLE_PIP_VERSION_CHECK=1 \
    RUN_PYTHON_SDK_IN_DEFAULT_ENVIRONMENT=1

WORKDIR /opt/calrec

# Every wheel from the hash lock first (docker/locks.py): source edits reuse this layer.
COPY docker/locks/calrec-ingest.txt docker/locks/calrec-ingest.txt
RUN pip install --require-hashes --no-deps -r docker/locks/calrec-ingest.txt

COPY setup.py pyproject.toml README.md ./
COPY calrec_core calrec_core
COPY components components
COPY pipelines pipelines
# The package alone: its dependencies (data, components) are all in the lock. Workers and
# the launching step must run the Beam that boot belongs to.
RUN pip install --no-deps --no-build-isolation . && pip check \
    && python -c "import apache_beam, sys; sys.exit(apache_beam.__version__ != '2.77.0' and f'apache-beam {apache_beam.__version__} is not the boot entrypoint Beam 2.77.0')"

COPY --from=beam_sdk /opt/apache/beam /opt/apache/beam

# Root, as in Beam's own SDK images: on Dataflow workers boot installs into and writes under
# the root-owned semi-persistent directory the worker VM mounts (/var/opt/google), which
# user 1000 cannot (Dataflow has no setting for the container's user). KFP steps on this
# image set their own command, so the entrypoint below is only Dataflow's.
USER 0:0
ENTRYPOINT ["/opt/apache/beam/boot"]

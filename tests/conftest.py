"""Shared test fixtures: where the bundled sample and the optional shared data live."""

from __future__ import annotations

import os
import pathlib

import pytest

# gcsfs probes each bucket for zonal storage over gRPC with TLS, which the local Cloud Storage
# server does not speak (it retries for a minute); read when gcsfs is first imported.
os.environ.setdefault("GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT", "false")
# google-auth looks for a Compute Engine metadata server when it finds no credentials; tests
# never reach one (read when google.auth is first imported, so set before any test).
os.environ.setdefault("NO_GCE_CHECK", "true")
os.environ.setdefault("GCE_METADATA_HOST", "127.0.0.1:9")
os.environ.setdefault("GCE_METADATA_IP", "127.0.0.1:9")

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT / "data" / "sample" / "amazon2018"
SAMPLE_CONFIG = REPO_ROOT / "configs" / "sample.yaml"
# The wider real data set sits beside a developer's checkout (or where $CALREC_SHARED_DATA
# says); users may not have it.
SHARED_DATA = pathlib.Path(os.environ.get("CALREC_SHARED_DATA",
                                          REPO_ROOT.parent / "shared" / "data"))


@pytest.fixture(scope="session")
def sample_dir() -> pathlib.Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def sample_config() -> pathlib.Path:
    return SAMPLE_CONFIG


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip(f"{SHARED_DATA} is not there (set $CALREC_SHARED_DATA)")
    return SHARED_DATA


@pytest.fixture()
def serve_http():
    """Starts loopback HTTP stand-ins: ``serve_http(handler_class, **attributes)`` serves a
    subclass of the handler (with ``attributes`` set, request logging off) on 127.0.0.1 in a
    thread and returns its port; every server stops after the test."""
    import http.server
    import threading

    servers = []

    def serve(handler_class, **attributes) -> int:
        attributes["log_message"] = lambda self, *args: None  # keep pytest output clean
        handler = type("Handler", (handler_class,), attributes)
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server.server_address[1]

    yield serve
    for server in servers:
        server.shutdown()
        server.server_close()


def _add_generations_to_the_emulator() -> None:
    """gcp-storage-emulator leaves out two things TensorStore relies on for Orbax's OCDBT
    manifests (read, then rewrite only if unchanged): a download's ``x-goog-generation``
    header and the ``ifGenerationMatch`` precondition of an upload. Adds both, once."""
    from http import HTTPStatus

    from gcp_storage_emulator import server
    from gcp_storage_emulator.exceptions import NotFound
    from gcp_storage_emulator.handlers import objects

    if getattr(objects, "calrec_generations", False):
        return
    download, insert = objects.download, objects.insert

    def generation(storage, bucket: str, name: str) -> str:
        try:
            return str(storage.get_file_obj(bucket, name)["generation"])
        except NotFound:
            return "0"  # GCS's precondition value for "no live object"

    def download_with_generation(request, response, storage, *args, **kwargs):
        download(request, response, storage, *args, **kwargs)
        if response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            response["x-goog-generation"] = generation(
                storage, request.params["bucket_name"], request.params["object_id"])

    def insert_if_generation_matches(request, response, storage, *args, **kwargs):
        wanted = request.query.get("ifGenerationMatch")
        name = request.query.get("name")
        if wanted and name and generation(storage, request.params["bucket_name"],
                                          name[0]) != wanted[0]:
            response.status = HTTPStatus.PRECONDITION_FAILED
            response.json({"error": {"code": 412, "message": "Precondition Failed",
                                     "errors": [{"reason": "conditionNotMet"}]}})
            return None
        return insert(request, response, storage, *args, **kwargs)

    objects.download = download_with_generation  # objects.get (alt=media) calls it too
    for _, handlers in server.HANDLERS:
        for method, handler in list(handlers.items()):
            if handler is download:
                handlers[method] = download_with_generation
            elif handler is insert:
                handlers[method] = insert_if_generation_matches
    objects.calrec_generations = True


class LocalCloudStorage:
    """A Cloud Storage server on 127.0.0.1 (gcp-storage-emulator, in memory) that every
    client of this process and its children reaches: gcsfs and google-cloud-storage through
    ``STORAGE_EMULATOR_HOST``, TensorStore (Orbax's array writes) through
    ``TENSORSTORE_GCS_HTTP_URL``."""

    BUCKET = "calrec-test"

    def __init__(self) -> None:
        import socket

        from gcp_storage_emulator.server import create_server

        _add_generations_to_the_emulator()
        with socket.socket() as probe:
            probe.bind(("127.0.0.1", 0))
            self.port = probe.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self._server = create_server("127.0.0.1", self.port, in_memory=True,
                                     default_bucket=self.BUCKET)
        self.environ = {
            "STORAGE_EMULATOR_HOST": self.url,
            "TENSORSTORE_GCS_HTTP_URL": self.url,
            # TensorStore's fixed bearer token for tests (no credentials lookup).
            "GOOGLE_AUTH_TOKEN_FOR_TESTING": "calrec-test-token",
            # gcsfs (through fsspec's per-protocol settings) connects anonymously.
            "FSSPEC_GCS_TOKEN": "anon",
        }
        self._count = 0

    def start(self) -> None:
        self._server.start()

    def stop(self) -> None:
        self._server.stop()

    def folder(self, name: str) -> str:
        """A fresh ``gs://`` folder (tests share the server, never a folder)."""
        self._count += 1
        return f"gs://{self.BUCKET}/{name}-{self._count}"


@pytest.fixture(scope="session")
def cloud_storage():
    """The session's local Cloud Storage server, its variables set for this process (and the
    processes it starts) while the session runs."""
    import logging
    import os

    storage = LocalCloudStorage()
    storage.start()
    saved = {name: os.environ.get(name) for name in storage.environ}
    os.environ.update(storage.environ)
    import fsspec.config

    fsspec.config.conf.setdefault("gcs", {})["token"] = "anon"  # read from the variables
    # only when fsspec is first imported
    # gcsfs warns on every bucket that it cannot ask for hierarchical namespaces anonymously.
    logging.getLogger("gcsfs").setLevel(logging.ERROR)
    yield storage
    fsspec.config.conf.get("gcs", {}).pop("token", None)
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value
    storage.stop()

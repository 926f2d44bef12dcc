"""Shared test fixtures: where the bundled sample and the optional shared data live."""

from __future__ import annotations

import pathlib

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[1]
SAMPLE_DIR = REPO_ROOT / "data" / "sample" / "amazon2018"
SAMPLE_CONFIG = REPO_ROOT / "configs" / "sample.yaml"
# The wider real data set sits beside a developer's checkout; users may not have it.
SHARED_DATA = REPO_ROOT.parent / "shared" / "data"


@pytest.fixture(scope="session")
def sample_dir() -> pathlib.Path:
    return SAMPLE_DIR


@pytest.fixture(scope="session")
def sample_config() -> pathlib.Path:
    return SAMPLE_CONFIG


@pytest.fixture(scope="session")
def shared_data() -> pathlib.Path:
    if not SHARED_DATA.is_dir():
        pytest.skip("../shared/data is not beside this checkout")
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

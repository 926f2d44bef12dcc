"""A loopback HTTP stand-in for the Vertex AI and Cloud Storage REST endpoints.

The real google-cloud-aiplatform SDK is pointed at it (``api_endpoint`` + REST transport for
Vertex AI, ``STORAGE_EMULATOR_HOST`` for Cloud Storage); it records every request and answers
with the smallest valid JSON, so tests assert on what the SDK really sends.
"""

from __future__ import annotations

import dataclasses
import http.server
import json
import pathlib
import sys
import threading
import urllib.parse

import pytest

# pytest puts tests/ on sys.path (for the root conftest), where this folder would pass for a
# namespace package named ``pipelines``; with the repository root on the path as well, the
# real (regular) package wins the import.
_REPO_ROOT = str(pathlib.Path(__file__).resolve().parents[2])
if _REPO_ROOT not in sys.path:
    sys.path.append(_REPO_ROOT)

PROJECT_NUMBER = "123456789012"


@dataclasses.dataclass
class RecordedRequest:
    method: str
    path: str  # URL path without the query
    query: dict  # query parameters, each a list of values
    body: object  # parsed JSON body (None when empty)
    authorization: str | None = None  # the Authorization header the SDK sent


class VertexStandIn:
    """State of the fake service: pipeline jobs, schedules and buckets, and the request log."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.pipeline_jobs: dict[str, dict] = {}
        self.schedules: dict[str, dict] = {}
        self.buckets: dict[str, dict] = {}
        self.iam_policies: dict[str, dict] = {}
        self.lock = threading.Lock()

    def find(self, method: str, fragment: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and fragment in r.path]

    # Each handler returns (status, JSON body).
    def handle(self, request: RecordedRequest) -> tuple[int, dict]:
        path, method = request.path, request.method
        if path == "/token" and method == "POST":  # OAuth 2.0 refresh for user credentials
            return 200, {"access_token": "stand-in-token", "expires_in": 3600,
                         "token_type": "Bearer"}
        if path.startswith("/storage/v1/b"):
            return self._storage(request)
        parts = path.strip("/").split("/")  # v1 projects P locations L collection [id[:verb]]
        if len(parts) < 6 or parts[0] != "v1" or parts[1] != "projects":
            return 404, {"error": {"code": 404, "message": f"no route {method} {path}"}}
        parent = "/".join(parts[1:5])
        collection = parts[5]
        if collection == "pipelineJobs" and method == "POST" and len(parts) == 6:
            job_id = request.query["pipelineJobId"][0]
            job = dict(request.body, name=f"{parent}/pipelineJobs/{job_id}",
                       state="PIPELINE_STATE_PENDING", createTime="2026-01-01T00:00:00Z")
            self.pipeline_jobs[job_id] = job
            return 200, job
        if collection == "schedules":
            return self._schedules(request, parent, parts[6:])
        return 404, {"error": {"code": 404, "message": f"no route {method} {path}"}}

    def _schedules(self, request, parent, rest) -> tuple[int, dict]:
        method = request.method
        if not rest and method == "POST":
            schedule_id = str(len(self.schedules) + 1)
            schedule = dict(request.body, name=f"{parent}/schedules/{schedule_id}",
                            state="ACTIVE", createTime="2026-01-01T00:00:00Z")
            self.schedules[schedule_id] = schedule
            return 200, schedule
        if not rest and method == "GET":
            return 200, {"schedules": list(self.schedules.values())}
        schedule_id, _, verb = rest[0].partition(":")
        if schedule_id not in self.schedules:
            return 404, {"error": {"code": 404, "message": f"schedule {schedule_id} not found"}}
        schedule = self.schedules[schedule_id]
        if method == "GET" and not verb:
            return 200, schedule
        if method == "POST" and verb in ("pause", "resume"):
            schedule["state"] = "PAUSED" if verb == "pause" else "ACTIVE"
            return 200, {}
        if method == "DELETE":
            del self.schedules[schedule_id]
            return 200, {"name": f"{parent}/operations/{schedule_id}", "done": True,
                         "response": {"@type": "type.googleapis.com/google.protobuf.Empty"}}
        return 404, {"error": {"code": 404, "message": f"no route {method} {request.path}"}}

    def _storage(self, request) -> tuple[int, dict]:
        parts = request.path.strip("/").split("/")  # storage v1 b [bucket [iam]]
        if len(parts) == 3 and request.method == "POST":
            bucket = dict(request.body, projectNumber=PROJECT_NUMBER, id=request.body["name"])
            self.buckets[bucket["name"]] = bucket
            return 200, bucket
        name = parts[3]
        if name not in self.buckets:
            return 404, {"error": {"code": 404, "message": f"bucket {name} not found"}}
        if len(parts) == 5 and parts[4] == "iam":
            if request.method == "PUT":
                self.iam_policies[name] = request.body
            return 200, self.iam_policies.get(name, {"bindings": [], "etag": "CAE="})
        return 200, self.buckets[name]


class _Handler(http.server.BaseHTTPRequestHandler):
    standin: VertexStandIn

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        if not raw:
            body = None
        elif "json" in (self.headers.get("Content-Type") or ""):
            body = json.loads(raw)
        else:  # OAuth token requests are form-encoded
            body = urllib.parse.parse_qs(raw.decode())
        request = RecordedRequest(self.command, url.path, urllib.parse.parse_qs(url.query), body,
                                  self.headers.get("Authorization"))
        with self.standin.lock:
            self.standin.requests.append(request)
            status, body = self.standin.handle(request)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve

    def log_message(self, *args) -> None:  # keep pytest output clean
        pass


@pytest.fixture()
def vertex_standin(monkeypatch):
    """(stand-in state, endpoint URL); Cloud Storage calls go to the same loopback server."""
    standin = VertexStandIn()
    handler = type("Handler", (_Handler,), {"standin": standin})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    endpoint = f"http://127.0.0.1:{server.server_address[1]}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    try:
        yield standin, endpoint
    finally:
        server.shutdown()
        server.server_close()

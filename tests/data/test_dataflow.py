"""`calrec ingest ... -- --runner DataflowRunner ...` with Beam's real Dataflow runner.

The CLI runs in a fresh process (Beam caches credentials and clients per process) against one
local loopback stand-in for the three Google services it talks to: OAuth token refresh (the
application-default credentials file names the stand-in's token URI), Cloud Storage (through
``STORAGE_EMULATOR_HOST``, which google-cloud-storage honours) and the Dataflow v1b3 REST API
(Beam's ``--dataflow_endpoint``; Beam picks the REST transport for a ``localhost`` endpoint).
The stand-in keeps objects in memory, answers every request the SDKs send here in the real
services' wire format, records them, and plays the job: when the job is created it writes
what the workers would have written (the files of a DirectRunner run on the same input) and
then reports the job's end state.
"""

from __future__ import annotations

import base64
import email.parser
import hashlib
import http.server
import json
import os
import pathlib
import re
import runpy
import subprocess
import sys
import threading
import urllib.parse
from collections.abc import Callable

import google_crc32c
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name

from calrec_core.data import load_stats, run_ingest

BUCKET = "calrec-test"
PROJECT = "calrec-project"
REGION = "europe-west4"
IMAGE = "europe-docker.pkg.dev/calrec-project/calrec/calrec-ingest:c0ffee1"
TOKEN = "stand-in-access-token"
# A service account signs its assertion for Google's token URI, whichever URI it posts to.
GOOGLE_TOKEN_AUDIENCE = "https://oauth2.googleapis.com/token"
REPO = pathlib.Path(__file__).resolve().parents[2]


class StandIn:
    """In-memory Cloud Storage, Dataflow v1b3 and OAuth token endpoint; records requests."""

    def __init__(self) -> None:
        self.objects: dict[tuple[str, str], bytes] = {}
        self.requests: list[tuple[str, str]] = []  # (method, path with query)
        self.jobs: list[dict] = []
        self.on_job_created: Callable[[dict], None] = lambda job: None
        self.end_state = "JOB_STATE_DONE"
        self.error_message = ""
        self._uploads: dict[str, tuple[str, str, bytearray]] = {}
        self.endpoint = ""
        self.public_key = b""  # the service account's; every token must be signed by it
        self._lock = threading.Lock()

    # -- Cloud Storage objects ------------------------------------------------------------
    def put(self, url: str, data: bytes) -> None:
        bucket, _, name = url.removeprefix("gs://").partition("/")
        self.objects[bucket, name] = data

    def get(self, url: str) -> bytes | None:
        bucket, _, name = url.removeprefix("gs://").partition("/")
        return self.objects.get((bucket, name))

    def names(self, prefix: str) -> list[str]:
        return sorted(f"gs://{bucket}/{name}" for bucket, name in self.objects
                      if f"gs://{bucket}/{name}".startswith(prefix))

    def _resource(self, bucket: str, name: str) -> dict:
        data = self.objects[bucket, name]
        crc = google_crc32c.value(data).to_bytes(4, "big")
        return {"kind": "storage#object", "bucket": bucket, "name": name,
                "id": f"{bucket}/{name}/1", "size": str(len(data)), "generation": "1",
                "metageneration": "1", "contentType": "application/octet-stream",
                "timeCreated": "2024-01-01T00:00:00.000Z", "updated": "2024-01-01T00:00:00.000Z",
                "md5Hash": base64.b64encode(hashlib.md5(data).digest()).decode(),
                "crc32c": base64.b64encode(crc).decode()}

    def _signed(self, token: str, audience: str | None) -> bool:
        from google.auth import exceptions, jwt

        try:
            jwt.decode(token, certs=self.public_key.decode(), audience=audience,
                       clock_skew_in_seconds=60)
        except (ValueError, exceptions.GoogleAuthError):
            return False
        return True

    # -- dispatch -------------------------------------------------------------------------
    def handle(self, method: str, target: str, headers, body: bytes):
        """-> (status, headers, body bytes or JSON-able)."""
        url = urllib.parse.urlsplit(target)
        path, query = urllib.parse.unquote(url.path), dict(urllib.parse.parse_qsl(url.query))
        with self._lock:
            self.requests.append((method, target))
        if path == "/token":  # a service account's signed assertion for an access token
            form = dict(urllib.parse.parse_qsl(body.decode()))
            if (form.get("grant_type") != "urn:ietf:params:oauth:grant-type:jwt-bearer"
                    or not self._signed(form.get("assertion", ""), GOOGLE_TOKEN_AUDIENCE)):
                return 400, {}, {"error": "invalid_grant"}
            return 200, {}, {"access_token": TOKEN, "expires_in": 3600, "token_type": "Bearer"}
        bearer = headers.get("Authorization", "").removeprefix("Bearer ")
        # GAPIC clients may sign their own JWT instead of asking for a token.
        if bearer != TOKEN and not self._signed(bearer, None):
            return 401, {}, {"error": {"code": 401, "message": "no stand-in credentials"}}
        if path.startswith("/v1b3/"):
            return self._dataflow(method, path, body)
        if path == "/batch/storage/v1":
            return self._batch(headers, body)
        return self._storage(method, path, query, headers, body)

    def _storage(self, method, path, query, headers, body):
        match = re.fullmatch(r"/(upload/|download/)?storage/v1/b/([^/]+)(?:/o(?:/(.+))?)?", path)
        if match is None:
            return 404, {}, {"error": {"code": 404, "message": f"no route {path}"}}
        kind, bucket, name = match.groups()
        if kind == "upload/":
            return self._upload(method, bucket, query, headers, body)
        if name is None and path.endswith("/o"):  # list
            prefix = query.get("prefix", "")
            items = [self._resource(b, n) for b, n in sorted(self.objects)
                     if b == bucket and n.startswith(prefix)]
            return 200, {}, {"kind": "storage#objects", "items": items}
        if name is None:  # the bucket itself
            return 200, {}, {"kind": "storage#bucket", "name": bucket, "id": bucket,
                             "projectNumber": "123456789", "location": REGION.upper()}
        if (bucket, name) not in self.objects:
            return 404, {}, {"error": {"code": 404, "message": f"No such object: {bucket}/{name}"}}
        if method == "DELETE":
            del self.objects[bucket, name]
            return 204, {}, b""
        if query.get("alt") == "media":
            data = self.objects[bucket, name]
            ranged = re.fullmatch(r"bytes=(\d+)-(\d*)", headers.get("Range", ""))
            if ranged:
                start = int(ranged.group(1))
                end = int(ranged.group(2)) if ranged.group(2) else len(data) - 1
                part = data[start:end + 1]
                return 206, {"Content-Range": f"bytes {start}-{start + len(part) - 1}/{len(data)}",
                             "x-goog-generation": "1"}, part
            return 200, {"x-goog-generation": "1"}, data
        return 200, {}, self._resource(bucket, name)

    def _upload(self, method, bucket, query, headers, body):
        kind = query.get("uploadType")
        if kind == "multipart":
            boundary = re.search(r'boundary="?([^";]+)', headers["Content-Type"]).group(1)
            parts = body.split(b"--" + boundary.encode())[1:-1]
            metadata, media = (part.split(b"\r\n\r\n", 1)[1].removesuffix(b"\r\n")
                               for part in parts)
            name = json.loads(metadata)["name"]
            self.objects[bucket, name] = media
            return 200, {}, self._resource(bucket, name)
        if kind == "resumable" and "upload_id" not in query:
            upload_id = f"u{len(self._uploads)}"
            name = query.get("name") or json.loads(body or b"{}")["name"]
            self._uploads[upload_id] = (bucket, name, bytearray())
            location = (f"http://{headers['Host']}/upload/storage/v1/b/{bucket}/o"
                        f"?uploadType=resumable&upload_id={upload_id}")
            return 200, {"Location": location}, b""
        if kind == "resumable" and method == "PUT":
            bucket, name, data = self._uploads[query["upload_id"]]
            data += body
            total = re.search(r"/(\d+|\*)$", headers.get("Content-Range", "*/*")).group(1)
            if total != "*" and int(total) == len(data):
                self.objects[bucket, name] = bytes(data)
                return 200, {}, self._resource(bucket, name)
            return 308, ({"Range": f"bytes=0-{len(data) - 1}"} if data else {}), b""
        return 400, {}, {"error": {"code": 400, "message": f"unexpected upload {query}"}}

    def _batch(self, headers, body):
        """A multipart/mixed of HTTP requests (what Beam's delete_batch sends)."""
        message = email.parser.BytesParser().parsebytes(
            f"Content-Type: {headers['Content-Type']}\r\n\r\n".encode() + body)
        boundary = "batch_stand_in"
        answer = b""
        for index, part in enumerate(message.get_payload()):
            inner = part.get_payload(decode=True)
            request_line, _, rest = inner.partition(b"\r\n")
            method, target, _ = request_line.decode().split(" ", 2)
            status, _, payload = self._storage(
                method, urllib.parse.unquote(urllib.parse.urlsplit(target).path), {}, {}, b"")
            text = json.dumps(payload) if not isinstance(payload, bytes) else ""
            answer += (f"--{boundary}\r\nContent-Type: application/http\r\n"
                       f"Content-ID: <response-{index + 1}>\r\n\r\n"
                       f"HTTP/1.1 {status} {http.HTTPStatus(status).phrase}\r\n"
                       f"Content-Type: application/json\r\nContent-Length: {len(text)}\r\n\r\n"
                       f"{text}\r\n").encode()
        answer += f"--{boundary}--\r\n".encode()
        return 200, {"Content-Type": f"multipart/mixed; boundary={boundary}"}, answer

    # -- Dataflow v1b3 --------------------------------------------------------------------
    def _dataflow(self, method, path, body):
        match = re.fullmatch(r"/v1b3/projects/([^/]+)/locations/([^/]+)/jobs(?:/([^/]+))?"
                             r"(/messages)?", path)
        if match is None:
            return 404, {}, {"error": {"code": 404, "message": f"no route {path}"}}
        project, region, job_id, messages = match.groups()
        if method == "POST" and job_id is None:
            job = json.loads(body)
            job.update(id=f"2024-01-01_00_00_00-{len(self.jobs) + 1}", projectId=project,
                       location=region, currentState="JOB_STATE_QUEUED")
            self.jobs.append(job)
            self.on_job_created(job)  # the workers run
            return 200, {}, job
        (job,) = [job for job in self.jobs if job["id"] == job_id]
        if messages:
            found = ([{"id": "1", "time": "2024-01-01T00:00:01Z", "messageText": self.error_message,
                       "messageImportance": "JOB_MESSAGE_ERROR"}] if self.error_message else [])
            return 200, {}, {"jobMessages": found}
        return 200, {}, {**job, "currentState": self.end_state}


class _Handler(http.server.BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    stand_in: StandIn

    def _serve(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        status, headers, payload = self.stand_in.handle(self.command, self.path, self.headers,
                                                        body)
        if not isinstance(payload, bytes):
            payload = json.dumps(payload).encode()
            headers = {"Content-Type": "application/json", **headers}
        self.send_response(status)
        for key, value in headers.items():
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(payload)))
        self.end_headers()
        self.wfile.write(payload)

    do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = _serve


@pytest.fixture()
def stand_in(tmp_path, serve_http):
    """(StandIn, environment for a `calrec` process that talks only to it)."""
    service = StandIn()
    port = serve_http(_Handler, stand_in=service)
    # "localhost": Beam talks REST (not gRPC) to a Dataflow endpoint that names it.
    endpoint = service.endpoint = f"http://localhost:{port}"
    # A service account (its file may name the token URI; a user's may not).
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    service.public_key = key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    credentials = tmp_path / "service-account.json"
    credentials.write_text(json.dumps({
        "type": "service_account", "project_id": PROJECT, "private_key_id": "k1",
        "private_key": key.private_bytes(serialization.Encoding.PEM,
                                         serialization.PrivateFormat.PKCS8,
                                         serialization.NoEncryption()).decode(),
        "client_email": f"ingest@{PROJECT}.iam.gserviceaccount.com", "client_id": "1",
        "token_uri": f"{endpoint}/token"}))
    env = {key: value for key, value in os.environ.items()
           if not key.lower().endswith("_proxy") and not key.startswith(("GOOGLE_", "GCE_"))
           and key not in ("CALREC_INGEST_IMAGE", "STORAGE_EMULATOR_HOST")}
    env.update(GOOGLE_APPLICATION_CREDENTIALS=str(credentials), STORAGE_EMULATOR_HOST=endpoint,
               NO_PROXY="localhost,127.0.0.1", HOME=str(tmp_path), NO_GCE_CHECK="True",
               GCE_METADATA_HOST="127.0.0.1:9", GCE_METADATA_IP="127.0.0.1:9",
               CLOUDSDK_CONFIG=str(tmp_path / "gcloud"))
    return service, env


def _raw_input(raw_dir: pathlib.Path, raw) -> pathlib.Path:
    """Two categories in the published layout; returns the roles YAML."""
    raw.write_lines(raw_dir / "Books_5.json.gz",
                    [raw.review(f"U{i}", f"B{j}", j) for i in range(6) for j in range(4)])
    raw.write_lines(raw_dir / "meta_Books.json.gz", [raw.meta(f"B{j}", f"Book {j}")
                                                     for j in range(4)])
    raw.write_lines(raw_dir / "Toys_5.json",
                    [raw.review(f"T{i}", f"X{j}", j) for i in range(4) for j in range(3)])
    return raw.write_config(raw_dir.parent / "roles.yaml", {
        "Books": {"role": "eval"}, "Toys": {"role": "pretrain"}})


def _upload(service: StandIn, folder: pathlib.Path, prefix: str) -> None:
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            service.put(f"{prefix}/{path.relative_to(folder).as_posix()}", path.read_bytes())


def _calrec(env: dict, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "calrec_core.cli", *args], env=env, cwd=REPO,
                          capture_output=True, text=True, timeout=300, check=False)


def _dataflow_args(service: StandIn, *extra: str) -> list[str]:
    return ["--", "--runner", "DataflowRunner", "--project", PROJECT, "--region", REGION,
            "--temp_location", f"gs://{BUCKET}/tmp", f"--dataflow_endpoint={service.endpoint}",
            "--job_name", "calrec-ingest-test", *extra]


STAGES = ("ReadReviews", "ReadMetadata", "BuildUserSequences", "BuildCorpus",
          "ComputeMixture", "WriteTFRecords", "WriteCorpus", "WriteDeadLetters", "WriteStats")


def _staged_pipeline(service: StandIn):
    from apache_beam.portability.api import beam_runner_api_pb2

    (url,) = [name for name in service.names(f"gs://{BUCKET}/tmp/")
              if name.endswith("/pipeline.pb")]
    return beam_runner_api_pb2.Pipeline.FromString(service.get(url))


def test_dataflow_job_request_and_the_outputs_read_back_through_gs(stand_in, raw_dir, raw,
                                                                    tmp_path):
    service, env = stand_in
    roles = _raw_input(raw_dir, raw)
    _upload(service, raw_dir, f"gs://{BUCKET}/raw")
    # What the workers write: the DirectRunner's output on the same input.
    local = tmp_path / "direct"
    run_ingest(raw_dir, roles, local)
    seen_marker = []

    def workers_run(job: dict) -> None:
        seen_marker.append(service.get(f"gs://{BUCKET}/out/INCOMPLETE"))
        _upload(service, local, f"gs://{BUCKET}/out")
        service.put(f"gs://{BUCKET}/out/INCOMPLETE", seen_marker[0])

    service.on_job_created = workers_run
    result = _calrec(env, "ingest", "--data", f"gs://{BUCKET}/raw", "--roles", str(roles),
                     "--output", f"gs://{BUCKET}/out",
                     *_dataflow_args(service, "--sdk_container_image", IMAGE))
    assert result.returncode == 0, result.stderr[-3000:]
    assert "Books" in result.stdout and f"wrote gs://{BUCKET}/out" in result.stdout

    (job,) = service.jobs
    pool = job["environment"]["workerPools"][0]
    assert pool["workerHarnessContainerImage"] == IMAGE
    assert {image["containerImage"] for image in pool["sdkHarnessContainerImages"]} == {IMAGE}
    # Nothing built at worker start-up: no setup.py, SDK or requirements staged.
    assert [package["name"] for package in pool.get("packages", [])] == [
        "submission_environment_dependencies.txt"]
    options = job["environment"]["sdkPipelineOptions"]["options"]
    assert (options["project"], options["region"], options["sdk_container_image"]) == (
        PROJECT, REGION, IMAGE)
    assert options["temp_location"].startswith(f"gs://{BUCKET}/tmp")
    assert job["name"] == "calrec-ingest-test" and job["type"] in (1, "JOB_TYPE_BATCH")
    # The transform graph (staged, as Beam's portable submission does) holds our stages and
    # runs every transform in the image's environment.
    pipeline = _staged_pipeline(service)
    names = {transform.unique_name for transform in pipeline.components.transforms.values()}
    assert set(STAGES) <= names
    # On Dataflow every worker parses some of each file.
    assert {"ReadReviews/SpreadReviewChunks", "ReadMetadata/SpreadMetadataChunks"} <= names
    (environment,) = pipeline.components.environments.values()
    from apache_beam.portability.api import beam_runner_api_pb2

    assert beam_runner_api_pb2.DockerPayload.FromString(
        environment.payload).container_image == IMAGE

    # The marker was there while the job ran and is gone once it succeeded; the stats printed
    # are the ones read back from gs://.
    assert seen_marker[0] and service.get(f"gs://{BUCKET}/out/INCOMPLETE") is None
    stats = json.loads(service.get(f"gs://{BUCKET}/out/stats.json"))
    assert stats == load_stats(local)
    assert ("GET", "/v1b3/") in {(method, path[:6]) for method, path in service.requests}


def test_a_failed_dataflow_job_leaves_the_output_marked_with_the_workers_error(
        stand_in, raw_dir, raw, tmp_path):
    service, env = stand_in
    roles = _raw_input(raw_dir, raw)
    _upload(service, raw_dir, f"gs://{BUCKET}/raw")
    service.end_state = "JOB_STATE_FAILED"
    damaged = f"gs://{BUCKET}/raw/Books_5.json.gz: unreadable after line 3: not a gzip file"
    service.error_message = f"Traceback (most recent call last):\n  ...\nInputError: {damaged}"
    env["CALREC_INGEST_IMAGE"] = IMAGE  # the default image, when the flag is not given
    result = _calrec(env, "ingest", "--data", f"gs://{BUCKET}/raw", "--roles", str(roles),
                     "--output", f"gs://{BUCKET}/out", *_dataflow_args(service))
    assert result.returncode == 1
    assert result.stderr.strip().splitlines()[-1] == f"calrec ingest: {damaged}"
    assert service.get(f"gs://{BUCKET}/out/INCOMPLETE") == (damaged + "\n").encode()
    (job,) = service.jobs
    assert job["environment"]["workerPools"][0]["workerHarnessContainerImage"] == IMAGE


def test_dataflow_without_a_worker_image_stops_before_touching_anything(stand_in, raw_dir, raw):
    service, env = stand_in
    roles = _raw_input(raw_dir, raw)
    result = _calrec(env, "ingest", "--data", f"gs://{BUCKET}/raw", "--roles", str(roles),
                     "--output", f"gs://{BUCKET}/out", *_dataflow_args(service))
    assert result.returncode == 1
    (line,) = result.stderr.strip().splitlines()[-1:]
    assert "--sdk_container_image" in line and "CALREC_INGEST_IMAGE" in line
    assert service.requests == []


def test_the_ingest_lock_holds_beams_whole_gcp_extra():
    """The ingest image installs `data` with apache-beam[gcp]: every requirement the extra adds
    on the images' Python is pinned in its lock, within Beam's own bounds."""
    from importlib import metadata

    lock = {}
    for line in (REPO / "docker" / "locks" / "calrec-ingest.txt").read_text().splitlines():
        if "==" in line and not line.lstrip().startswith("#"):
            name, _, version = line.split()[0].partition("==")
            lock[canonicalize_name(name)] = version
    environment = {"python_version": "3.11", "python_full_version": "3.11.7",
                   "sys_platform": "linux", "platform_system": "Linux",
                   "platform_machine": "x86_64", "implementation_name": "cpython",
                   "platform_python_implementation": "CPython", "os_name": "posix"}
    # The launcher's Beam (this venv, installed from the pins) is the workers' Beam.
    pins = runpy.run_path(str(REPO / "docker" / "pins.py"))["read_pins"]()
    assert lock["apache-beam"] == pins["apache-beam"]
    gcp = [Requirement(line) for line in metadata.requires("apache-beam")
           if "extra == \"gcp\"" in line]
    assert len(gcp) > 20
    for requirement in gcp:
        if requirement.marker.evaluate({**environment, "extra": "gcp"}):
            name = canonicalize_name(requirement.name)
            assert name in lock, requirement
            assert requirement.specifier.contains(lock[name], prereleases=True), requirement


def test_dataflow_args_from_pipeline_parameters():
    """The pipeline's Dataflow parameters as Beam options: none without a project, the worker
    image always, sizes only when given, and a clear error when a required one is empty."""
    from calrec_core.data.ingest import dataflow_args, dataflow_worker_args
    from calrec_core.errors import CalrecError

    assert dataflow_args("", "", "", "") == []
    args = dataflow_args("p", "europe-west4", "gs://b/tmp", "r/calrec-ingest:1",
                         machine_type="n2-standard-8", max_workers="16")
    assert args == ["--runner=DataflowRunner", "--project=p", "--region=europe-west4",
                    "--temp_location=gs://b/tmp", "--sdk_container_image=r/calrec-ingest:1",
                    "--machine_type=n2-standard-8", "--max_num_workers=16"]
    # The image is already there, so the worker check keeps the options as they are.
    assert dataflow_worker_args(args) == args
    with pytest.raises(CalrecError, match=r"needs \['region', 'temp_location'\]"):
        dataflow_args("p", "", "", "r/calrec-ingest:1")

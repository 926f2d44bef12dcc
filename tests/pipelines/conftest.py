"""A loopback HTTP stand-in for the Vertex AI and Cloud Storage REST endpoints.

The real google-cloud-aiplatform SDK is pointed at it (``api_endpoint`` + REST transport for
Vertex AI, ``STORAGE_EMULATOR_HOST`` for Cloud Storage); it records every request, refuses what
the real service would refuse (missing or malformed fields, bad filters, unknown parameters,
unauthenticated calls) with the service's error shape, and otherwise answers with the
smallest valid resource, so tests assert on what the SDK really sends and gets back.
"""

from __future__ import annotations

import dataclasses
import email.parser
import email.policy
import hashlib
import http.server
import json
import pathlib
import re
import sys
import threading
import urllib.parse

import pytest
import yaml

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
    form: dict | None = None  # multipart/form-data fields (bytes), for uploads


class StandInError(Exception):
    """A request the real service would refuse: (HTTP status, gRPC status name, message)."""

    def __init__(self, code: int, status: str, message: str) -> None:
        super().__init__(message)
        self.code, self.status, self.message = code, status, message


def _invalid(message: str) -> StandInError:
    return StandInError(400, "INVALID_ARGUMENT", message)


_LABEL = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
_JOB_ID = re.compile(r"^[a-z0-9][a-z0-9-]{0,127}$")
_NETWORK = re.compile(r"^projects/[0-9]+/global/networks/[a-z][-a-z0-9]*$")
_KMS = re.compile(r"^projects/[^/]+/locations/(?P<location>[^/]+)/keyRings/[^/]+/cryptoKeys/"
                  r"[^/]+$")
_CRON = re.compile(r"^((CRON_TZ|TZ)=\S+\s+)?(\S+\s+){4}\S+$")
# Schedule list filters: terms joined by AND; fields as in Vertex AI's ListSchedules.
_TERM = re.compile(r'^(?P<field>[a-z_]+)\s*(?P<op>=|!=|:)\s*(?P<value>\*|"[^"]*")$')
_SCHEDULE_FIELDS = {"display_name": "displayName", "state": "state",
                    "create_pipeline_job_request": "createPipelineJobRequest"}
_FINAL = {"PIPELINE_STATE_SUCCEEDED", "PIPELINE_STATE_FAILED", "PIPELINE_STATE_CANCELLED"}
_JOB_FINAL = {"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED",
              "JOB_STATE_EXPIRED"}
# Machine types that are Cloud TPU VMs (their chips come with the machine type).
_TPU_MACHINE = re.compile(r"^(ct5lp-hightpu-(1|4|8)t|ct5p-hightpu-4t|ct6e-standard-(1|4|8)t)$")


def _parse_filter(expression: str, fields: dict[str, str]) -> list[tuple[str, str, str]]:
    """(resource field, operator, value) per AND-ed term; INVALID_ARGUMENT on bad syntax."""
    terms = []
    for term in re.split(r"\s+AND\s+", expression.strip()):
        match = _TERM.match(term.strip().strip("()").strip())
        if not match:
            raise _invalid(f"unparsable filter term {term!r}")
        if match["field"] not in fields:
            raise _invalid(f"unsupported filter field {match['field']!r}")
        if match["value"] == "*" and match["op"] != ":":
            raise _invalid(f"'*' needs the ':' operator in {term!r}")
        terms.append((fields[match["field"]], match["op"], match["value"]))
    return terms


def _matches(resource: dict, terms: list[tuple[str, str, str]]) -> bool:
    for field, op, wanted in terms:
        value = resource.get(field)
        if op == ":" and wanted == "*":
            ok = value is not None
        else:
            text = wanted[1:-1]
            if op == ":" and text.endswith("*"):
                ok = isinstance(value, str) and value.startswith(text[:-1])
            else:
                ok = (value == text) == (op != "!=")
        if not ok:
            return False
    return True


def _check_pipeline_job(job: dict, region: str) -> None:
    """What Vertex AI checks of a PipelineJob before accepting it."""
    if not isinstance(job, dict):
        raise _invalid("pipelineJob must be an object")
    spec = job.get("pipelineSpec")
    if not isinstance(spec, dict) or not {"pipelineInfo", "root", "deploymentSpec",
                                          "schemaVersion"} <= set(spec):
        raise _invalid("pipelineSpec is missing or not a compiled KFP pipeline")
    runtime = job.get("runtimeConfig") or {}
    if not str(runtime.get("gcsOutputDirectory", "")).startswith("gs://"):
        raise _invalid("runtimeConfig.gcsOutputDirectory must be a gs:// URI")
    declared = spec["root"].get("inputDefinitions", {}).get("parameters", {})
    given = runtime.get("parameterValues") or {}
    unknown = sorted(set(given) - set(declared))
    if unknown:
        raise _invalid(f"unknown pipeline parameters {unknown}")
    missing = sorted(name for name, definition in declared.items()
                     if "defaultValue" not in definition and not definition.get("isOptional")
                     and name not in given)
    if missing:
        raise _invalid(f"required pipeline parameters {missing} have no value")
    if "@" not in job.get("serviceAccount", ""):
        raise _invalid("serviceAccount must be a service account e-mail")
    bad = [key for key, value in (job.get("labels") or {}).items()
           if not _LABEL.match(key) or not _LABEL_VALUE.match(value)]
    if bad:
        raise _invalid(f"invalid labels {bad}")
    if "network" in job and not _NETWORK.match(job["network"]):
        raise _invalid(f"invalid network {job['network']!r}")
    if "encryptionSpec" in job:
        key = _KMS.match(job["encryptionSpec"].get("kmsKeyName", ""))
        if not key or key["location"] != region:
            raise _invalid("encryptionSpec.kmsKeyName must be a key in the job's region")


def _check_custom_job(body) -> None:
    """What Vertex AI checks of a CustomJob before accepting it: the request schema (unknown
    or mistyped fields are refused), then the service's own rules."""
    from google.cloud import aiplatform_v1
    from google.protobuf import json_format

    if not isinstance(body, dict):
        raise _invalid("customJob must be an object")
    try:
        message = json_format.ParseDict(
            body, aiplatform_v1.types.CustomJob.pb(aiplatform_v1.types.CustomJob()),
            ignore_unknown_fields=False)
    except json_format.ParseError as error:
        raise _invalid(f"Invalid JSON payload received. {error}") from None
    job = aiplatform_v1.types.CustomJob.wrap(message)
    if not job.display_name:
        raise _invalid("CustomJob.display_name is required")
    pools = list(job.job_spec.worker_pool_specs)
    if not pools:
        raise _invalid("CustomJob.job_spec.worker_pool_specs must have at least one entry")
    used = [index for index, pool in enumerate(pools)
            if pool.machine_spec.machine_type or pool.replica_count]
    if 0 not in used:
        raise _invalid("worker_pool_specs[0] (the primary replica) is required")
    for index in used:
        pool = pools[index]
        spec = pool.machine_spec
        where = f"worker_pool_specs[{index}]"
        if not spec.machine_type:
            raise _invalid(f"{where}.machine_spec.machine_type is required")
        if not (pool.container_spec.image_uri or pool.python_package_spec.executor_image_uri):
            raise _invalid(f"{where} needs container_spec.image_uri or python_package_spec")
        if pool.replica_count < 1:
            raise _invalid(f"{where}.replica_count must be positive")
        tpu = bool(_TPU_MACHINE.match(spec.machine_type))
        accelerator = spec.accelerator_type.name if spec.accelerator_type else ""
        if accelerator == "ACCELERATOR_TYPE_UNSPECIFIED":
            accelerator = ""
        if spec.tpu_topology and not tpu:
            raise _invalid(f"{where}: tpu_topology is only supported for TPU machine types")
        if tpu and (accelerator or spec.accelerator_count):
            raise _invalid(f"{where}: {spec.machine_type} does not take an accelerator_type")
        if tpu and pool.replica_count != 1:
            raise _invalid(f"{where}: TPU worker pools must have replica_count 1")
        if bool(accelerator) != bool(spec.accelerator_count):
            raise _invalid(f"{where}: accelerator_type and accelerator_count go together")
    if len(used) > 1 and pools[0].replica_count != 1:
        raise _invalid("worker_pool_specs[0] (the primary replica) must have replica_count 1")
    bad = [key for key, value in job.labels.items()
           if not _LABEL.match(key) or not _LABEL_VALUE.match(value)]
    if bad:
        raise _invalid(f"invalid labels {bad}")
    if job.job_spec.network and not _NETWORK.match(job.job_spec.network):
        raise _invalid(f"invalid network {job.job_spec.network!r}")
    if job.job_spec.service_account and "@" not in job.job_spec.service_account:
        raise _invalid("service_account must be a service account e-mail")
    output = job.job_spec.base_output_directory.output_uri_prefix
    if output and not output.startswith("gs://"):
        raise _invalid("base_output_directory.output_uri_prefix must be a gs:// URI")


class VertexStandIn:
    """State of the fake service: pipeline jobs, schedules, metadata contexts, buckets, the
    Kubeflow package repository, and the request log. Requests the real service would refuse
    get its error answer (status, gRPC status name, message), so tests see what users see."""

    def __init__(self) -> None:
        self.requests: list[RecordedRequest] = []
        self.pipeline_jobs: dict[str, dict] = {}
        # States a job passes through, one per GET after its creation (then it stays put).
        self.job_states: list[str] = ["PIPELINE_STATE_RUNNING", "PIPELINE_STATE_SUCCEEDED"]
        self.schedules: dict[str, dict] = {}
        self.contexts: dict[str, dict] = {}
        self.context_children: dict[str, list[str]] = {}
        self.buckets: dict[str, dict] = {}
        self.iam_policies: dict[str, dict] = {}
        self.packages: dict[str, dict] = {}  # package -> {"versions": {..}, "tags": {..}}
        self.objects: dict[str, list[dict]] = {}  # bucket -> object resources
        self.custom_jobs: dict[str, dict] = {}
        # States a custom job passes through after JOB_STATE_QUEUED, one per GET.
        self.custom_job_states: list[str] = ["JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
        # The error a custom job that ends FAILED reports.
        self.custom_job_error = "The replica workerpool0-0 exited with a non-zero status of 1."
        # Plays created custom jobs instead of the state list: player(job) -> a handle with
        # poll() -> (state, error message) and cancel().
        self.custom_job_player = None
        self.lock = threading.Lock()

    def find(self, method: str, fragment: str) -> list[RecordedRequest]:
        return [r for r in self.requests if r.method == method and fragment in r.path]

    def handle(self, request: RecordedRequest) -> tuple[int, object]:
        try:
            return self._route(request)
        except StandInError as error:
            return error.code, {"error": {"code": error.code, "status": error.status,
                                          "message": error.message}}

    def _route(self, request: RecordedRequest) -> tuple[int, object]:
        path, method = request.path, request.method
        if path == "/token" and method == "POST":  # OAuth 2.0 token endpoint
            return 200, {"access_token": "stand-in-token", "expires_in": 3600,
                         "token_type": "Bearer"}
        if request.authorization != "Bearer stand-in-token" and not (
                request.authorization or "").startswith("Bearer ey"):
            raise StandInError(401, "UNAUTHENTICATED", "request had no valid credentials")
        if path.startswith("/storage/v1/b"):
            return self._storage(request)
        if path.startswith("/v3/projects/") and method == "GET":  # Resource Manager
            project = path.rsplit("/", 1)[-1]
            if project != "test-project":
                raise StandInError(403, "PERMISSION_DENIED", f"no access to {project}")
            return 200, {"name": f"projects/{PROJECT_NUMBER}", "projectId": project,
                         "state": "ACTIVE"}
        parts = path.strip("/").split("/")  # v1 projects P locations L collection [id[:verb]]
        if len(parts) == 2 and method == "POST":  # Kubeflow repository: PROJECT/REPOSITORY
            return self._upload(request, *parts)
        if len(parts) < 6 or parts[0] != "v1" or parts[1] != "projects":
            raise StandInError(404, "NOT_FOUND", f"no route {method} {path}")
        parent = "/".join(parts[1:5])
        region = parts[4]
        if parts[5] == "pipelineJobs":
            return self._jobs(request, parent, region, parts[6:])
        if parts[5] == "schedules":
            return self._schedules(request, parent, region, parts[6:])
        if parts[5] == "customJobs":
            return self._custom_jobs(request, parent, parts[6:])
        if parts[5:8] == ["metadataStores", "default", "contexts"]:
            return self._contexts(request, parent, parts[8:])
        if parts[5:7] == ["metadataStores", "default"] and method == "GET":
            return 200, {"name": f"{parent}/metadataStores/default"}
        raise StandInError(404, "NOT_FOUND", f"no route {method} {path}")

    def _jobs(self, request, parent, region, rest) -> tuple[int, dict]:
        method = request.method
        if not rest and method == "POST":
            job_id = (request.query.get("pipelineJobId") or [""])[0]
            if not _JOB_ID.match(job_id):
                raise _invalid(f"pipelineJobId {job_id!r} is not a valid id")
            if job_id in self.pipeline_jobs:
                raise StandInError(409, "ALREADY_EXISTS", f"pipeline job {job_id} exists")
            _check_pipeline_job(request.body, region)
            job = dict(request.body, name=f"{parent}/pipelineJobs/{job_id}",
                       state="PIPELINE_STATE_PENDING", createTime="2026-01-01T00:00:00Z")
            job["_states"] = list(self.job_states)
            self.pipeline_jobs[job_id] = job
            return 200, self._public(job)
        job_id, _, verb = rest[0].partition(":") if rest else ("", "", "")
        if job_id not in self.pipeline_jobs:
            raise StandInError(404, "NOT_FOUND", f"pipeline job {job_id} not found")
        job = self.pipeline_jobs[job_id]
        if method == "GET" and not verb:
            if job["_states"] and job["state"] not in _FINAL:
                job["state"] = job["_states"].pop(0)
                if job["state"] != "PIPELINE_STATE_PENDING":
                    job.setdefault("startTime", "2026-01-01T00:01:00Z")
                done = "SUCCEEDED" if job["state"] == "PIPELINE_STATE_SUCCEEDED" else "RUNNING"
                job["jobDetail"] = {"taskDetails": [
                    {"taskName": "ingest", "state": "SUCCEEDED", "taskId": "1"},
                    {"taskName": "train-stage1", "state": done, "taskId": "2"}]}
                if job["state"] in _FINAL:
                    job["endTime"] = "2026-01-01T02:00:00Z"
            # Vertex AI creates the run's metadata context once the job is accepted.
            job.setdefault("jobDetail", {})["pipelineRunContext"] = {
                "name": f"{parent}/metadataStores/default/contexts/{job_id}",
                "schemaTitle": "system.PipelineRun"}
            return 200, self._public(job)
        if method == "POST" and verb == "cancel":
            if job["state"] in _FINAL:
                raise StandInError(400, "FAILED_PRECONDITION",
                                   f"pipeline job {job_id} is already {job['state']}")
            job["_states"] = ["PIPELINE_STATE_CANCELLED"]
            job["state"] = "PIPELINE_STATE_CANCELLING"
            return 200, {}
        raise StandInError(404, "NOT_FOUND", f"no route {method} {request.path}")

    def _custom_jobs(self, request, parent, rest) -> tuple[int, dict]:
        method = request.method
        if not rest and method == "POST":
            _check_custom_job(request.body)
            job_id = str(4000000000000000000 + len(self.custom_jobs) + 1)
            job = dict(request.body, name=f"{parent}/customJobs/{job_id}",
                       state="JOB_STATE_QUEUED", createTime="2026-01-01T00:00:00Z")
            job["_states"] = list(self.custom_job_states)
            if self.custom_job_player is not None:
                job["_player"] = self.custom_job_player(self._public(job))
            self.custom_jobs[job_id] = job
            return 200, self._public(job)
        job_id, _, verb = rest[0].partition(":") if rest else ("", "", "")
        if job_id not in self.custom_jobs:
            raise StandInError(404, "NOT_FOUND", f"custom job {job_id} not found")
        job = self.custom_jobs[job_id]
        if method == "GET" and not verb:
            if job["state"] not in _JOB_FINAL:
                if job.get("_player") is not None:
                    state, error = job["_player"].poll()
                    if job["state"] == "JOB_STATE_CANCELLING":
                        state = ("JOB_STATE_CANCELLED" if state in _JOB_FINAL
                                 else "JOB_STATE_CANCELLING")
                elif job["_states"]:
                    state, error = job["_states"].pop(0), self.custom_job_error
                else:
                    state, error = job["state"], None
                job["state"] = state
                if state not in ("JOB_STATE_QUEUED", "JOB_STATE_PENDING"):
                    job.setdefault("startTime", "2026-01-01T00:01:00Z")
                if state in _JOB_FINAL:
                    job["endTime"] = "2026-01-01T02:00:00Z"
                    if state != "JOB_STATE_SUCCEEDED":
                        job["error"] = {"code": 1 if state == "JOB_STATE_CANCELLED" else 3,
                                        "message": error or "CANCELED"}
            return 200, self._public(job)
        if method == "POST" and verb == "cancel":
            if job["state"] in _JOB_FINAL:
                raise StandInError(400, "FAILED_PRECONDITION",
                                   f"custom job {job_id} is already {job['state']}")
            if job.get("_player") is not None:
                job["_player"].cancel()
            job["_states"] = ["JOB_STATE_CANCELLED"]
            job["state"] = "JOB_STATE_CANCELLING"
            return 200, {}
        raise StandInError(404, "NOT_FOUND", f"no route {method} {request.path}")

    @staticmethod
    def _public(job: dict) -> dict:
        return {key: value for key, value in job.items() if not key.startswith("_")}

    def _schedules(self, request, parent, region, rest) -> tuple[int, dict]:
        method = request.method
        if not rest and method == "POST":
            body = request.body or {}
            if not body.get("displayName"):
                raise _invalid("displayName is required")
            if not _CRON.match(body.get("cron", "")):
                raise _invalid(f"cron {body.get('cron')!r} is not a cron expression")
            if int(body.get("maxConcurrentRunCount", 0)) < 1:
                raise _invalid("maxConcurrentRunCount must be positive")
            create = body.get("createPipelineJobRequest") or {}
            if create.get("parent") != parent:
                raise _invalid(f"createPipelineJobRequest.parent must be {parent}")
            _check_pipeline_job(create.get("pipelineJob"), region)
            schedule_id = str(len(self.schedules) + 1)
            schedule = dict(body, name=f"{parent}/schedules/{schedule_id}",
                            state="ACTIVE", createTime="2026-01-01T00:00:00Z")
            self.schedules[schedule_id] = schedule
            return 200, schedule
        if not rest and method == "GET":
            expression = (request.query.get("filter") or [""])[0]
            terms = _parse_filter(expression, _SCHEDULE_FIELDS) if expression else []
            found = [schedule for schedule in self.schedules.values()
                     if _matches(schedule, terms)]
            return 200, {"schedules": found}
        schedule_id, _, verb = rest[0].partition(":")
        if schedule_id not in self.schedules:
            raise StandInError(404, "NOT_FOUND", f"schedule {schedule_id} not found")
        schedule = self.schedules[schedule_id]
        if method == "GET" and not verb:
            return 200, schedule
        if method == "POST" and verb in ("pause", "resume"):
            wanted = "ACTIVE" if verb == "pause" else "PAUSED"
            if schedule["state"] != wanted:
                raise StandInError(400, "FAILED_PRECONDITION",
                                   f"cannot {verb} a schedule that is {schedule['state']}")
            schedule["state"] = "PAUSED" if verb == "pause" else "ACTIVE"
            return 200, {}
        if method == "DELETE":
            del self.schedules[schedule_id]
            return 200, {"name": f"{parent}/operations/{schedule_id}", "done": True,
                         "response": {"@type": "type.googleapis.com/google.protobuf.Empty"}}
        raise StandInError(404, "NOT_FOUND", f"no route {method} {request.path}")

    def _contexts(self, request, parent, rest) -> tuple[int, dict]:
        prefix = f"{parent}/metadataStores/default/contexts"
        if not rest and request.method == "POST":
            context_id = (request.query.get("contextId") or [""])[0]
            body = request.body or {}
            if not _JOB_ID.match(context_id) or not body.get("schemaTitle"):
                raise _invalid("contextId and schemaTitle are required")
            if context_id in self.contexts:
                raise StandInError(409, "ALREADY_EXISTS", f"context {context_id} exists")
            context = dict(body, name=f"{prefix}/{context_id}")
            self.contexts[context_id] = context
            return 200, context
        context_id, _, verb = rest[0].partition(":") if rest else ("", "", "")
        if context_id not in self.contexts:
            if request.method == "GET" and context_id in self.pipeline_jobs:
                # Vertex AI keeps a system.PipelineRun context per pipeline job.
                return 200, {"name": f"{prefix}/{context_id}",
                             "schemaTitle": "system.PipelineRun", "displayName": context_id}
            raise StandInError(404, "NOT_FOUND", f"context {context_id} not found")
        if request.method == "GET" and not verb:
            return 200, self.contexts[context_id]
        if request.method == "POST" and verb == "addContextChildren":
            children = (request.body or {}).get("childContexts") or []
            if not children:
                raise _invalid("childContexts is required")
            self.context_children.setdefault(context_id, []).extend(children)
            return 200, {}
        raise StandInError(404, "NOT_FOUND", f"no route {request.method} {request.path}")

    def _upload(self, request, project, repository) -> tuple[int, object]:
        form = request.form or {}
        content = form.get("content")
        if content is None:
            raise _invalid("multipart field 'content' (the pipeline YAML) is required")
        try:
            spec = yaml.safe_load(content)
            name = spec["pipelineInfo"]["name"]
            spec["root"], spec["deploymentSpec"]  # noqa: B018 (a compiled pipeline has both)
        except Exception as error:  # noqa: BLE001 (any unreadable upload is refused)
            raise _invalid(f"content is not a compiled KFP pipeline: {error}") from None
        tags = [tag for tag in form.get("tags", b"").decode().split(",") if tag]
        if any(not re.match(r"^[A-Za-z0-9][A-Za-z0-9._-]*$", tag) for tag in tags):
            raise _invalid(f"invalid tags {tags}")
        version = "sha256:" + hashlib.sha256(content).hexdigest()
        package = self.packages.setdefault(f"{project}/{repository}/{name}",
                                           {"versions": {}, "tags": {}})
        package["versions"][version] = content
        package["tags"].update(dict.fromkeys(tags, version))
        return 200, f"{name}/{version}"

    def _storage(self, request) -> tuple[int, dict]:
        parts = request.path.strip("/").split("/")  # storage v1 b [bucket [iam|o]]
        if len(parts) == 3 and request.method == "POST":
            if not (request.body or {}).get("name") or not request.query.get("project"):
                raise _invalid("bucket name and project are required")
            bucket = dict(request.body, projectNumber=PROJECT_NUMBER, id=request.body["name"])
            self.buckets[bucket["name"]] = bucket
            return 200, bucket
        name = parts[3]
        if len(parts) == 5 and parts[4] == "o" and request.method == "GET":
            if name not in self.objects:
                raise StandInError(404, "NOT_FOUND", f"bucket {name} not found")
            prefix = (request.query.get("prefix") or [""])[0]
            return 200, {"kind": "storage#objects", "items": [
                item for item in self.objects[name] if item["name"].startswith(prefix)]}
        if name not in self.buckets:
            raise StandInError(404, "NOT_FOUND", f"bucket {name} not found")
        if len(parts) == 5 and parts[4] == "iam":
            if request.method == "PUT":
                if not isinstance((request.body or {}).get("bindings"), list):
                    raise _invalid("policy bindings must be a list")
                self.iam_policies[name] = request.body
            return 200, self.iam_policies.get(name, {"bindings": [], "etag": "CAE="})
        return 200, self.buckets[name]


def _multipart(content_type: str, raw: bytes) -> dict[str, bytes]:
    message = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
        b"Content-Type: " + content_type.encode() + b"\r\n\r\n" + raw)
    if not message.is_multipart():
        raise ValueError("multipart body without parts")
    return {part.get_param("name", header="content-disposition"): part.get_payload(decode=True)
            for part in message.iter_parts()}


class _Handler(http.server.BaseHTTPRequestHandler):
    standin: VertexStandIn

    def _serve(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        content_type = self.headers.get("Content-Type") or ""
        body = form = None
        try:
            if raw and "json" in content_type:
                body = json.loads(raw)
            elif raw and content_type.startswith("multipart/form-data"):
                form = _multipart(content_type, raw)
            elif raw:  # OAuth token requests are form-encoded
                body = urllib.parse.parse_qs(raw.decode())
        except ValueError as error:  # a malformed body is the client's fault
            status, body = 400, {"error": {"code": 400, "status": "INVALID_ARGUMENT",
                                           "message": f"malformed body: {error}"}}
            self._answer(status, body)
            return
        request = RecordedRequest(self.command, url.path, urllib.parse.parse_qs(url.query), body,
                                  self.headers.get("Authorization"), form)
        with self.standin.lock:
            self.standin.requests.append(request)
            status, body = self.standin.handle(request)
        self._answer(status, body)

    def _answer(self, status: int, body) -> None:
        text = isinstance(body, str)
        data = body.encode() if text else json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "text/plain" if text else "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    do_GET = do_POST = do_PUT = do_PATCH = do_DELETE = _serve


@pytest.fixture()
def vertex_standin(monkeypatch, serve_http):
    """(stand-in state, endpoint URL); Cloud Storage calls go to the same loopback server."""
    standin = VertexStandIn()
    endpoint = f"http://127.0.0.1:{serve_http(_Handler, standin=standin)}"
    monkeypatch.setenv("STORAGE_EMULATOR_HOST", endpoint)
    # The SDK checks who owns an existing pipeline-root bucket through Resource Manager, whose
    # client takes no endpoint from the environment: point it at the stand-in too.
    from google.cloud import resourcemanager

    projects_client = resourcemanager.ProjectsClient
    monkeypatch.setattr(resourcemanager, "ProjectsClient", lambda credentials=None: (
        projects_client(credentials=credentials, transport="rest",
                        client_options={"api_endpoint": endpoint})))
    return standin, endpoint

"""Submission and scheduling through the real aiplatform SDK, against the loopback stand-in."""

from __future__ import annotations

import base64
import json

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.auth.credentials import AnonymousCredentials

from calrec_core.cli import main
from components import ImageSet
from pipelines import (
    BuildOptions,
    VertexTarget,
    compile_pipeline,
    create_schedule,
    delete_schedule,
    list_schedules,
    pause_schedule,
    resume_schedule,
    submit_pipeline,
)

SERVICE_ACCOUNT = "calrec-runner@test-project.iam.gserviceaccount.com"
IMAGES = ImageSet.tagged("us-docker.pkg.dev/test-project/calrec", "0123abcd")


@pytest.fixture(scope="module")
def template(tmp_path_factory, sample_config):
    roles = yaml.safe_load(sample_config.read_text())
    options = BuildOptions(categories=("Gift_Cards", "Magazine_Subscriptions"), roles=roles,
                           preset="tiny", images=IMAGES)
    return compile_pipeline(options, tmp_path_factory.mktemp("spec") / "calrec.yaml")


def _target(endpoint: str) -> VertexTarget:
    return VertexTarget(project="test-project", region="europe-west4",
                        pipeline_root="gs://calrec-artifacts/runs",
                        service_account=SERVICE_ACCOUNT, api_endpoint=endpoint,
                        api_transport="rest", credentials=AnonymousCredentials())


def _task_caching(pipeline_spec: dict) -> dict[str, bool]:
    tasks = pipeline_spec["root"]["dag"]["tasks"]
    return {name: task.get("cachingOptions", {}).get("enableCache", False)
            for name, task in tasks.items()}


def test_submit_sends_the_compiled_job_with_parameters_labels_and_service_account(
        vertex_standin, template):
    standin, endpoint = vertex_standin
    name = submit_pipeline(
        _target(endpoint), template,
        parameter_values={"raw_data_uri": "gs://calrec-data/amazon2018", "alpha": 0.25,
                          "train_overrides": ["seed=7"]},
        labels={"team": "recsys", "trigger": "manual"}, display_name="calrec-nightly",
    )
    (create,) = standin.find("POST", "/pipelineJobs")
    assert create.path == "/v1/projects/test-project/locations/europe-west4/pipelineJobs"
    job_id = create.query["pipelineJobId"][0]
    assert name == f"projects/test-project/locations/europe-west4/pipelineJobs/{job_id}"
    job = create.body
    assert job["displayName"] == "calrec-nightly"
    assert job["serviceAccount"] == SERVICE_ACCOUNT
    assert job["labels"] == {"team": "recsys", "trigger": "manual"}
    runtime = job["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == "gs://calrec-artifacts/runs"
    assert runtime["parameterValues"]["raw_data_uri"] == "gs://calrec-data/amazon2018"
    assert runtime["parameterValues"]["alpha"] == 0.25
    assert runtime["parameterValues"]["train_overrides"] == ["seed=7"]
    spec = job["pipelineSpec"]
    assert spec["pipelineInfo"]["name"] == "calrec"
    images = {executor["container"]["image"] for executor in
              spec["deploymentSpec"]["executors"].values()}
    assert images == {IMAGES.cpu}
    # Compiled settings kept: every step may be served from Vertex AI's cache.
    assert all(_task_caching(spec).values())
    # The SDK first looks for the pipeline-root bucket, creates it in the region and grants
    # the run's service account access.
    (lookup, *_) = standin.find("GET", "/storage/v1/b/calrec-artifacts")
    assert lookup.method == "GET"
    (bucket,) = standin.find("POST", "/storage/v1/b")
    assert bucket.query["project"] == ["test-project"]
    assert bucket.body["name"] == "calrec-artifacts"
    assert bucket.body["location"].lower() == "europe-west4"
    (policy,) = standin.find("PUT", "/storage/v1/b/calrec-artifacts/iam")
    members = {member for binding in policy.body["bindings"] for member in binding["members"]}
    assert members == {f"serviceAccount:{SERVICE_ACCOUNT}"}


def test_submit_without_cache_turns_caching_off_for_every_step(vertex_standin, template):
    standin, endpoint = vertex_standin
    submit_pipeline(_target(endpoint), template,
                    parameter_values={"raw_data_uri": "gs://calrec-data/amazon2018"},
                    enable_caching=False)
    (create,) = standin.find("POST", "/pipelineJobs")
    caching = _task_caching(create.body["pipelineSpec"])
    assert set(caching) >= {"ingest", "train-stage1", "report"}
    assert not any(caching.values())


def test_schedule_lifecycle_create_list_pause_resume_delete(vertex_standin, template):
    standin, endpoint = vertex_standin
    target = _target(endpoint)
    name = create_schedule(
        target, template, "TZ=Etc/UTC 0 3 * * 1", schedule_name="calrec-weekly",
        parameter_values={"raw_data_uri": "gs://calrec-data/amazon2018"},
        labels={"trigger": "schedule"}, max_run_count=52,
    )
    (create,) = standin.find("POST", "/schedules")
    assert create.path == "/v1/projects/test-project/locations/europe-west4/schedules"
    body = create.body
    assert body["displayName"] == "calrec-weekly"
    assert body["cron"] == "TZ=Etc/UTC 0 3 * * 1"
    assert int(body["maxRunCount"]) == 52
    assert int(body["maxConcurrentRunCount"]) == 1
    request = body["createPipelineJobRequest"]
    assert request["parent"] == "projects/test-project/locations/europe-west4"
    job = request["pipelineJob"]
    assert job["serviceAccount"] == SERVICE_ACCOUNT
    assert job["labels"] == {"trigger": "schedule"}
    assert job["runtimeConfig"]["parameterValues"]["raw_data_uri"] == "gs://calrec-data/amazon2018"
    # A retrain must read the data again: scheduled runs are not served from the cache.
    assert not any(_task_caching(job["pipelineSpec"]).values())

    listed = list_schedules(target)
    assert listed == [{"name": name, "display_name": "calrec-weekly",
                       "cron": "TZ=Etc/UTC 0 3 * * 1", "state": "ACTIVE"}]
    pause_schedule(target, name)
    assert standin.find("POST", ":pause")[0].path.endswith("/schedules/1:pause")
    assert list_schedules(target)[0]["state"] == "PAUSED"
    resume_schedule(target, name)
    assert list_schedules(target)[0]["state"] == "ACTIVE"
    delete_schedule(target, name)
    assert standin.find("DELETE", "/schedules/1")
    assert list_schedules(target) == []


def test_bad_requests_fail_before_reaching_the_service(vertex_standin, template):
    standin, endpoint = vertex_standin
    target = _target(endpoint)
    with pytest.raises(ValueError, match="invalid labels"):
        submit_pipeline(target, template, labels={"Team": "RecSys"})
    with pytest.raises(ValueError, match="cron"):
        create_schedule(target, template, "every monday")
    with pytest.raises(ValueError, match="gs://"):
        VertexTarget(project="p", region="r", pipeline_root="/local/folder",
                     service_account=SERVICE_ACCOUNT)
    with pytest.raises(ValueError, match="service_account"):
        VertexTarget(project="p", region="r", pipeline_root="gs://b", service_account="")
    assert standin.requests == []


def test_cli_submits_and_manages_schedules_with_application_default_credentials(
        vertex_standin, template, tmp_path, monkeypatch, capsys):
    standin, endpoint = vertex_standin
    # Application default credentials: a service-account key made here, whose token
    # endpoint is the stand-in too.
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    adc = tmp_path / "application_default_credentials.json"
    adc.write_text(json.dumps({
        "type": "service_account", "project_id": "test-project", "private_key_id": "1",
        "private_key": pem, "client_email": SERVICE_ACCOUNT, "client_id": "1",
        "token_uri": f"{endpoint}/token",
    }))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(adc))
    target = ["--project", "test-project", "--region", "europe-west4",
              "--pipeline-root", "gs://calrec-artifacts/runs",
              "--service-account", SERVICE_ACCOUNT, "--api-endpoint", endpoint,
              "--api-transport", "rest"]
    assert main(["pipeline", "submit", *target, "--template", str(template),
                 "--param", "raw_data_uri=gs://calrec-data/amazon2018", "--param", "n_gen=16",
                 "--param", "baselines=[lir]", "--label", "team=recsys", "--no-cache"]) == 0
    (create,) = standin.find("POST", "/pipelineJobs")
    parameters = create.body["runtimeConfig"]["parameterValues"]
    assert parameters["n_gen"] == 16 and parameters["baselines"] == ["lir"]
    assert create.body["labels"] == {"team": "recsys"}
    assert not any(_task_caching(create.body["pipelineSpec"]).values())
    assert "Pipeline job: projects/test-project/locations/europe-west4/pipelineJobs/" in (
        capsys.readouterr().out)

    assert main(["pipeline", "schedule", "create", *target, "--template", str(template),
                 "--cron", "0 4 * * *", "--name", "calrec-daily",
                 "--param", "raw_data_uri=gs://calrec-data/amazon2018"]) == 0
    (schedule,) = standin.find("POST", "/schedules")
    assert schedule.body["cron"] == "0 4 * * *"
    assert schedule.body["displayName"] == "calrec-daily"
    name = capsys.readouterr().out.split("Schedule: ")[1].strip()
    assert main(["pipeline", "schedule", "pause", *target, "--schedule", name]) == 0
    assert main(["pipeline", "schedule", "list", *target]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()
              if line.startswith("{")]
    assert listed == [{"name": name, "display_name": "calrec-daily", "cron": "0 4 * * *",
                       "state": "PAUSED"}]
    assert main(["pipeline", "schedule", "delete", *target, "--schedule", name]) == 0
    assert standin.schedules == {}
    calls = [request for request in standin.requests if request.path != "/token"]
    assert calls and all(_signed_by(request.authorization) == SERVICE_ACCOUNT
                         for request in calls)


def _signed_by(authorization: str | None) -> str | None:
    """Who the request's bearer token speaks for: the stand-in's token, or a self-signed JWT."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    token = authorization.split(" ", 1)[1]
    if token == "stand-in-token":
        return SERVICE_ACCOUNT
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["iss"]

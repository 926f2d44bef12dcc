"""Runs, schedules, experiments and template uploads through the real aiplatform and kfp SDKs,
against the validating loopback stand-in (tests/pipelines/conftest.py)."""

from __future__ import annotations

import base64
import json

import pytest
import yaml
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from google.oauth2 import service_account

from calrec_core.cli import main
from calrec_core.data import load_roles_config
from calrec_core.experiment import ExperimentConfig, apply_overrides, preset
from calrec_core.experiment.steps import as_parameter
from components import ImageSet
from components.raw_manifest import data_version, gcs_manifest
from pipelines import BuildOptions, compile_pipeline
from pipelines.registry import upload_template
from pipelines.vertex import (
    RunSettings,
    VertexTarget,
    create_schedule,
    delete_schedule,
    list_schedules,
    pause_schedule,
    resume_schedule,
    submit_pipeline,
)

SERVICE_ACCOUNT = "calrec-runner@test-project.iam.gserviceaccount.com"
IMAGES = ImageSet.tagged("us-docker.pkg.dev/test-project/calrec", "0123abcd")
REGION = "europe-west4"
KEY = f"projects/test-project/locations/{REGION}/keyRings/calrec/cryptoKeys/artifacts"
NETWORK = "projects/123456789012/global/networks/calrec-vpc"
RAW = "gs://calrec-data/amazon2018"


@pytest.fixture(scope="module")
def experiment(sample_config):
    import dataclasses

    return dataclasses.replace(preset("tiny"), roles=load_roles_config(sample_config))


@pytest.fixture(scope="module")
def template(tmp_path_factory, experiment):
    options = BuildOptions(experiment=experiment, images=IMAGES)
    return compile_pipeline(options, tmp_path_factory.mktemp("spec") / "calrec.yaml")


@pytest.fixture()
def adc(vertex_standin, tmp_path, monkeypatch):
    """Application default credentials: a service-account key made here, whose token
    endpoint is the stand-in; returns the key's info."""
    _, endpoint = vertex_standin
    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                            serialization.NoEncryption()).decode()
    info = {"type": "service_account", "project_id": "test-project", "private_key_id": "1",
            "private_key": pem, "client_email": SERVICE_ACCOUNT, "client_id": "1",
            "token_uri": f"{endpoint}/token"}
    path = tmp_path / "application_default_credentials.json"
    path.write_text(json.dumps(info))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(path))
    return info


def _credentials(info):
    return service_account.Credentials.from_service_account_info(
        info, scopes=["https://www.googleapis.com/auth/cloud-platform"])


def _target(endpoint: str, info) -> VertexTarget:
    return VertexTarget(project="test-project", region=REGION, api_endpoint=endpoint,
                        api_transport="rest", credentials=_credentials(info))


SETTINGS = RunSettings(pipeline_root="gs://calrec-artifacts/runs",
                       service_account=SERVICE_ACCOUNT)


def _location(endpoint: str) -> list[str]:
    return ["--project", "test-project", "--region", REGION, "--api-endpoint", endpoint,
            "--api-transport", "rest"]


def _run_flags(template) -> list[str]:
    return ["--template", str(template), "--pipeline-root", "gs://calrec-artifacts/runs",
            "--service-account", SERVICE_ACCOUNT, "--param", f"raw_data_uri={RAW}"]


def _task_caching(pipeline_spec: dict) -> dict[str, bool]:
    """Caching of every step, the ones inside the per-category loop included."""
    dags = [pipeline_spec["root"]["dag"]] + [component["dag"] for component in
                                            pipeline_spec["components"].values()
                                            if "dag" in component]
    return {name: task.get("cachingOptions", {}).get("enableCache", False)
            for dag in dags for name, task in dag["tasks"].items()
            if "parameterIterator" not in task}


def test_submit_sends_the_job_with_network_cmek_labels_and_registers_the_experiment(
        vertex_standin, template, adc):
    standin, endpoint = vertex_standin
    settings = RunSettings(pipeline_root="gs://calrec-artifacts/runs",
                           service_account=SERVICE_ACCOUNT, network=NETWORK,
                           encryption_key=KEY, experiment="calrec-tuning")
    name = submit_pipeline(
        _target(endpoint, adc), settings, template,
        parameter_values={"raw_data_uri": RAW, "beam_args": ["--direct_num_workers=2"]},
        labels={"team": "recsys"}, display_name="calrec-nightly",
    )
    (create,) = standin.find("POST", "/pipelineJobs")
    job_id = create.query["pipelineJobId"][0]
    assert name == f"projects/test-project/locations/{REGION}/pipelineJobs/{job_id}"
    job = create.body
    assert (job["displayName"], job["serviceAccount"]) == ("calrec-nightly", SERVICE_ACCOUNT)
    assert job["network"] == NETWORK and job["encryptionSpec"]["kmsKeyName"] == KEY
    assert job["labels"] == {"team": "recsys"}
    runtime = job["runtimeConfig"]
    assert runtime["gcsOutputDirectory"] == "gs://calrec-artifacts/runs"
    assert runtime["parameterValues"] == {"raw_data_uri": RAW,
                                          "beam_args": ["--direct_num_workers=2"]}
    images = {executor["container"]["image"] for executor in
              job["pipelineSpec"]["deploymentSpec"]["executors"].values()
              if "container" in executor}
    assert images == {IMAGES.ingest, IMAGES.cpu}
    caching = _task_caching(job["pipelineSpec"])
    assert caching.pop("raw-data-version") is False and all(caching.values())
    # The run is registered in the experiment (created on first use) as a child context.
    experiment = standin.contexts["calrec-tuning"]
    assert experiment["schemaTitle"] == "system.Experiment"
    assert [child.rsplit("/", 1)[-1] for child in standin.context_children["calrec-tuning"]] == [
        job_id]
    # The pipeline-root bucket is created in the region for the run's service account.
    (bucket,) = standin.find("POST", "/storage/v1/b")
    assert bucket.body["location"].lower() == REGION


def test_the_stand_in_refuses_what_vertex_ai_refuses(vertex_standin, template, adc, capsys):
    standin, endpoint = vertex_standin
    args = ["pipeline", "submit", *_location(endpoint), *_run_flags(template)]
    with pytest.raises(SystemExit, match="alpah"):  # the SDK checks names itself
        main([*args, "--param", "alpah=0.1"])
    # A run without its required raw data URI is refused by the service: one line.
    args.remove(f"raw_data_uri={RAW}")
    args.remove("--param")
    with pytest.raises(SystemExit) as refused:
        main(args)
    message = str(refused.value)
    assert message.startswith("calrec: Vertex AI answered 400") and "raw_data_uri" in message
    assert "\n" not in message
    assert standin.pipeline_jobs == {}
    # A schedule filter the service cannot parse is refused, not ignored.
    with pytest.raises(SystemExit, match="unsupported filter field 'colour'"):
        main(["pipeline", "schedule", "list", *_location(endpoint), "--filter",
              'colour="blue"'])


def test_experiments_that_drop_a_compiled_category_are_refused_before_any_request(
        vertex_standin, template, adc, experiment, tmp_path):
    standin, endpoint = vertex_standin
    changed = as_parameter(experiment)
    changed["roles"]["categories"]["Magazine_Subscriptions"]["role"] = "pretrain"
    with pytest.raises(ValueError, match=r"compiled for evaluation categories.*"
                                         r"\['Magazine_Subscriptions'\].*recompile"):
        submit_pipeline(_target(endpoint, adc), SETTINGS, template,
                        parameter_values={"raw_data_uri": RAW, "experiment": changed})
    roles = tmp_path / "roles.yaml"
    roles.write_text(yaml.safe_dump(changed["roles"]))
    with pytest.raises(SystemExit, match="Magazine_Subscriptions"):
        main(["pipeline", "submit", *_location(endpoint), *_run_flags(template),
              "--roles", str(roles)])
    with pytest.raises(SystemExit, match="unknown field 'alpah'"):
        main(["pipeline", "submit", *_location(endpoint), *_run_flags(template),
              "--set", "train.alpah=0"])
    with pytest.raises(SystemExit, match="--set"):
        main(["pipeline", "submit", *_location(endpoint), *_run_flags(template),
              "--param", "experiment={}"])
    assert standin.requests == []
    # An experiment that keeps the compiled eval categories goes through.
    submit_pipeline(_target(endpoint, adc), SETTINGS, template,
                    parameter_values={"raw_data_uri": RAW, "experiment": as_parameter(experiment)})
    assert len(standin.pipeline_jobs) == 1


def test_set_changes_the_templates_experiment_and_preset_starts_afresh(vertex_standin,
                                                                       template, adc,
                                                                       experiment):
    standin, endpoint = vertex_standin
    submit = ["pipeline", "submit", *_location(endpoint), *_run_flags(template)]
    assert main(submit) == 0  # nothing asked: the compiled default runs
    assert main([*submit, "--set", "train.alpha=0", "--set", "eval.n_gen=2"]) == 0
    assert main([*submit, "--preset", "demo"]) == 0
    default, changed, demo = [job["runtimeConfig"]["parameterValues"]
                              for job in standin.pipeline_jobs.values()]
    assert "experiment" not in default
    assert _canonical(changed["experiment"]) == _canonical(as_parameter(apply_overrides(
        experiment, ["train.alpha=0", "eval.n_gen=2"])))
    assert _canonical(demo["experiment"]) == _canonical(as_parameter(preset("demo")))


def _canonical(experiment: dict) -> str:
    """An experiment parameter as Vertex AI holds it: a protobuf Struct, whose mappings (the
    roles' categories among them) keep no order."""
    return json.dumps(as_parameter(ExperimentConfig.from_dict(experiment)), sort_keys=True)


def test_submit_wait_follows_the_run_and_prints_the_console_link(
        vertex_standin, template, adc, capsys):
    standin, endpoint = vertex_standin
    standin.job_states = ["PIPELINE_STATE_PENDING", "PIPELINE_STATE_RUNNING",
                          "PIPELINE_STATE_RUNNING", "PIPELINE_STATE_SUCCEEDED"]
    assert main(["pipeline", "submit", *_location(endpoint), *_run_flags(template),
                 "--wait", "--poll-seconds", "0"]) == 0
    # Stripped: KFP's local runner (another test in this process) may have left print()
    # indenting; what matters here is each line's content.
    out = [line.strip() for line in capsys.readouterr().out.splitlines()]
    (job_id,) = standin.pipeline_jobs
    assert out[0] == f"Pipeline job: projects/test-project/locations/{REGION}/pipelineJobs/{job_id}"
    assert out[1] == (f"Console: https://console.cloud.google.com/vertex-ai/locations/{REGION}/"
                      f"pipelines/runs/{job_id}?project=test-project")
    # Each change of state printed once, ending in success.
    assert out[2:] == ["PENDING  [ingest=SUCCEEDED, train-stage1=RUNNING]",
                       "RUNNING  [ingest=SUCCEEDED, train-stage1=RUNNING]",
                       "SUCCEEDED  [ingest=SUCCEEDED, train-stage1=SUCCEEDED]"]
    standin.job_states = ["PIPELINE_STATE_RUNNING", "PIPELINE_STATE_FAILED"]
    assert main(["pipeline", "submit", *_location(endpoint), *_run_flags(template),
                 "--wait", "--poll-seconds", "0"]) == 1
    assert "Run ended PIPELINE_STATE_FAILED" in capsys.readouterr().out


def test_status_and_cancel_take_a_run_id_and_only_the_location(
        vertex_standin, template, adc, capsys):
    standin, endpoint = vertex_standin
    standin.job_states = ["PIPELINE_STATE_RUNNING"]
    name = submit_pipeline(_target(endpoint, adc), SETTINGS, template,
                           parameter_values={"raw_data_uri": RAW},
                           labels={"commit": "c0ffee1"})
    job_id = name.rsplit("/", 1)[-1]
    capsys.readouterr()
    assert main(["pipeline", "status", job_id, *_location(endpoint)]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["state"] == "PIPELINE_STATE_RUNNING" and status["name"] == name
    assert status["labels"]["commit"] == "c0ffee1"  # what Cloud Build's run is labelled with
    assert {"task": "ingest", "state": "SUCCEEDED"} in status["tasks"]
    assert status["console"].endswith(f"/runs/{job_id}?project=test-project")
    assert main(["pipeline", "cancel", name, *_location(endpoint)]) == 0
    (cancel,) = standin.find("POST", ":cancel")
    assert cancel.path.endswith(f"/pipelineJobs/{job_id}:cancel")
    capsys.readouterr()
    assert main(["pipeline", "status", job_id, *_location(endpoint)]) == 0
    assert json.loads(capsys.readouterr().out)["state"] == "PIPELINE_STATE_CANCELLED"
    # A finished run cannot be cancelled: the service's answer, on one line.
    with pytest.raises(SystemExit, match="^calrec: Vertex AI answered 400: .*already"):
        main(["pipeline", "cancel", job_id, *_location(endpoint)])


def test_schedule_list_shows_every_calrec_schedule_and_honours_filters(
        vertex_standin, template, adc, tmp_path, capsys):
    standin, endpoint = vertex_standin
    target = _target(endpoint, adc)
    weekly = create_schedule(target, SETTINGS, template, "TZ=Etc/UTC 0 3 * * 1",
                             schedule_name="calrec-weekly", parameter_values={"raw_data_uri": RAW},
                             max_run_count=52)
    daily = create_schedule(target, SETTINGS, template, "0 4 * * *",
                            schedule_name="calrec-daily", parameter_values={"raw_data_uri": RAW})
    # Another pipeline's schedule in the same region is not ours to list.
    other = yaml.safe_load(template.read_text())
    other["pipelineInfo"]["name"] = "fraud-model"
    other_template = tmp_path / "other.yaml"
    other_template.write_text(yaml.safe_dump(other))
    create_schedule(target, SETTINGS, other_template, "0 5 * * *", schedule_name="fraud",
                    parameter_values={"raw_data_uri": RAW})
    body = standin.find("POST", "/schedules")[0].body
    assert (body["displayName"], int(body["maxRunCount"])) == ("calrec-weekly", 52)
    job = body["createPipelineJobRequest"]["pipelineJob"]
    assert job["serviceAccount"] == SERVICE_ACCOUNT
    # Compiled caching kept: the raw-data version step re-hashes the data on every run.
    caching = _task_caching(job["pipelineSpec"])
    assert caching.pop("raw-data-version") is False and all(caching.values())

    names = {schedule["display_name"] for schedule in list_schedules(target)}
    assert names == {"calrec-weekly", "calrec-daily"}
    assert {s["display_name"] for s in list_schedules(target, pipeline_name=None)} == {
        "calrec-weekly", "calrec-daily", "fraud"}
    (listing, *_) = standin.find("GET", "/schedules")
    assert listing.query["filter"] == ["create_pipeline_job_request:*"]
    # The filter is applied by the service (the stand-in evaluates it like Vertex AI).
    assert [s["name"] for s in list_schedules(target, 'display_name="calrec-weekly"')] == [
        weekly]
    pause_schedule(target, daily)
    assert [s["name"] for s in list_schedules(target, 'state="PAUSED"')] == [daily]
    assert standin.find("GET", "/schedules")[-1].query["filter"] == [
        'create_pipeline_job_request:* AND state="PAUSED"']

    # Lifecycle from the shell with only the location: no pipeline root or service account.
    assert main(["pipeline", "schedule", "list", *_location(endpoint)]) == 0
    listed = [json.loads(line) for line in capsys.readouterr().out.splitlines()]
    assert {(s["display_name"], s["state"]) for s in listed} == {
        ("calrec-weekly", "ACTIVE"), ("calrec-daily", "PAUSED")}
    assert main(["pipeline", "schedule", "resume", daily, *_location(endpoint)]) == 0
    assert main(["pipeline", "schedule", "pause", weekly.rsplit("/", 1)[-1],
                 *_location(endpoint)]) == 0
    assert main(["pipeline", "schedule", "list", *_location(endpoint), "--filter",
                 'display_name:"calrec-w*"']) == 0
    (line,) = capsys.readouterr().out.splitlines()[-1:]
    assert json.loads(line)["state"] == "PAUSED" and json.loads(line)["name"] == weekly
    resume_schedule(target, weekly)
    assert main(["pipeline", "schedule", "delete", weekly, *_location(endpoint)]) == 0
    delete_schedule(target, daily)
    assert list_schedules(target) == []
    calls = [request for request in standin.requests if request.path != "/token"]
    assert calls and all(_signed_by(request.authorization) == SERVICE_ACCOUNT
                         for request in calls)


def test_bad_settings_fail_before_reaching_the_service(vertex_standin, template, adc):
    standin, endpoint = vertex_standin
    target = _target(endpoint, adc)
    with pytest.raises(ValueError, match="invalid labels"):
        submit_pipeline(target, SETTINGS, template, labels={"Team": "RecSys"})
    with pytest.raises(ValueError, match="cron"):
        create_schedule(target, SETTINGS, template, "every monday")
    with pytest.raises(ValueError, match="gs://"):
        RunSettings(pipeline_root="/local/folder", service_account=SERVICE_ACCOUNT)
    with pytest.raises(ValueError, match="network"):
        RunSettings(pipeline_root="gs://b", service_account=SERVICE_ACCOUNT, network="my-vpc")
    other_region = KEY.replace(REGION, "us-central1")
    with pytest.raises(ValueError, match="is in us-central1"):
        submit_pipeline(target, RunSettings(pipeline_root="gs://b",
                                            service_account=SERVICE_ACCOUNT,
                                            encryption_key=other_region), template)
    assert standin.requests == []


def test_missing_or_refused_credentials_end_in_one_line(vertex_standin, template, tmp_path,
                                                        monkeypatch, adc):
    standin, endpoint = vertex_standin
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "absent.json"))
    for command in (["pipeline", "submit", *_location(endpoint), *_run_flags(template)],
                    ["pipeline", "status", "run-1", *_location(endpoint)],
                    ["pipeline", "schedule", "list", *_location(endpoint)]):
        with pytest.raises(SystemExit) as refused:
            main(command)
        message = str(refused.value)
        assert message.startswith("calrec: no Google Cloud credentials") and "\n" not in message
        assert "gcloud auth application-default login" in message
    # A key the token endpoint rejects.
    bad = dict(adc, token_uri=f"{endpoint}/no-such-token-endpoint")
    (tmp_path / "bad.json").write_text(json.dumps(bad))
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", str(tmp_path / "bad.json"))
    with pytest.raises(SystemExit) as refused:
        main(["pipeline", "status", "run-1", *_location(endpoint)])
    assert "\n" not in str(refused.value) and str(refused.value).startswith("calrec: ")
    assert standin.pipeline_jobs == {}


def test_upload_puts_the_template_into_a_kubeflow_repository(vertex_standin, template, adc,
                                                            capsys):
    standin, endpoint = vertex_standin
    host = f"https://{REGION}-kfp.pkg.dev/test-project/calrec-pipelines"
    package, version = upload_template(host, template, ["c0ffee1", "latest"],
                                       credentials=_credentials(adc), api_endpoint=endpoint)
    content = template.read_bytes()
    assert package == "calrec"
    import hashlib

    assert version == "sha256:" + hashlib.sha256(content).hexdigest()
    (upload,) = standin.find("POST", "/test-project/calrec-pipelines")
    assert upload.form["content"] == content
    assert upload.form["tags"] == b"c0ffee1,latest"
    stored = standin.packages["test-project/calrec-pipelines/calrec"]
    assert stored["tags"] == {"c0ffee1": version, "latest": version}
    assert main(["pipeline", "upload", "--host", host, "--template", str(template),
                 "--tag", "v2", "--api-endpoint", endpoint]) == 0
    assert "Uploaded calrec sha256:" in capsys.readouterr().out
    with pytest.raises(ValueError, match="Kubeflow repository host"):
        upload_template("https://example.com/repo", template, [], credentials=object())
    with pytest.raises(ValueError, match="invalid tags"):
        upload_template(host, template, ["sha256:x"], credentials=object())


def test_gcs_data_version_follows_object_content_not_upload_time(vertex_standin, adc):
    from google.cloud import storage

    standin, endpoint = vertex_standin
    client = storage.Client(project="test-project", credentials=_credentials(adc),
                            client_options={"api_endpoint": endpoint})

    def objects(md5_reviews):
        return [{"name": "amazon2018/Gift_Cards.json.gz", "size": "10", "md5Hash": md5_reviews,
                 "generation": "1"},
                {"name": "amazon2018/meta_Gift_Cards.json.gz", "size": "7",
                 "crc32c": "AAAAAA==", "generation": "5"},
                {"name": "amazon2018/", "size": "0", "md5Hash": "1B2M2Y8AsgTpgAmY7PhCfg=="},
                {"name": "amazon2018-old/x.json.gz", "size": "3", "md5Hash": "zzz"}]

    standin.objects["calrec-data"] = objects("aaa")
    entries = gcs_manifest(RAW, client)
    assert entries == [("Gift_Cards.json.gz", 10, "md5:aaa"),
                       ("meta_Gift_Cards.json.gz", 7, "crc32c:AAAAAA==:generation:5")]
    first = data_version(RAW, client)
    for item in standin.objects["calrec-data"]:  # re-uploaded, same bytes
        item["generation"] = str(int(item.get("generation", 0)) + 10)
    standin.objects["calrec-data"][1]["generation"] = "5"
    assert data_version(RAW, client) == first
    standin.objects["calrec-data"] = objects("bbb")  # new content
    assert data_version(RAW, client) != first
    with pytest.raises(FileNotFoundError):
        gcs_manifest("gs://calrec-data/nothing-here", client)


def _signed_by(authorization: str | None) -> str | None:
    """Who the request's bearer token speaks for: the stand-in's token, or a self-signed JWT."""
    if not authorization or not authorization.startswith("Bearer "):
        return None
    token = authorization.split(" ", 1)[1]
    if token == "stand-in-token":
        return SERVICE_ACCOUNT
    payload = token.split(".")[1]
    return json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))["iss"]

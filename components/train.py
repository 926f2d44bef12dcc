"""Training step: Stage I (all categories jointly) or Stage II (one category from Stage I).

The Model artifact holds the exported selected model only. Resumable checkpoints (with the
optimizer state), metrics.jsonl and the TensorBoard events live in the run-scoped work
folder (components.runtime.work_dir), where a retried task resumes.

``train`` trains inside the task's own container (one host); ``train_custom_job`` launches
the same stage as a Vertex AI custom job on several hosts (components.custom_job) and waits.
"""

from kfp.dsl import HTML, Dataset, Input, Metrics, Model, Output, OutputPath


def train(
    dataset: Input[Dataset],
    experiment: str,
    stage: int,
    checkpoint_root: str,
    pipeline_root: str,
    run_id: str,
    jax_cache_dir: str,
    timeout_hours: float,
    machine: list,
    model: Output[Model],
    training_metrics: Output[Metrics],
    loss_curves: Output[HTML],
    category: str = "",
    init_model: Input[Model] = None,
):
    """Stage ``stage`` of CALRec (§3.3) through calrec_core.experiment.steps.train_stage: Stage I
    on every category, or Stage II on ``category`` from ``init_model``. ``experiment`` is the
    experiment's training view (JSON text from the configure step); ``machine`` (cpu, memory,
    accelerator type, count) is what the task asked for, kept in the metadata (passing it also
    carries those parameters into the per-category loop)."""
    import json
    import os

    from calrec_core.experiment import ExperimentConfig
    from calrec_core.experiment.steps import (
        stage_name,
        stage_train_config,
        train_stage,
    )
    from components.runtime import (
        compilation_cache_dir,
        deadline,
        enable_compilation_cache,
        export_model,
        gcs_uri,
        record_trained_model,
        work_dir,
    )

    config = ExperimentConfig.from_dict(json.loads(experiment))
    task = stage_name(stage, category)
    work = work_dir(checkpoint_root, pipeline_root, run_id, task, model.path)
    enable_compilation_cache(compilation_cache_dir(jax_cache_dir, checkpoint_root,
                                                   pipeline_root))
    init = (gcs_uri(os.path.join(init_model.path, init_model.metadata["checkpoint_subdir"]))
            if init_model is not None else None)
    with deadline(timeout_hours, task):
        result = train_stage(config, stage, gcs_uri(dataset.path), work,
                             category=category or None, init=init)
    export_model(result.checkpoint_dir, model.path)
    record_trained_model(model, training_metrics, loss_curves, stage=stage, category=category,
                         init_model=init_model, machine=machine,
                         train_config=stage_train_config(config, stage).to_dict(),
                         result=result, work=work)


def train_custom_job(
    dataset: Input[Dataset],
    experiment: str,
    stage: int,
    checkpoint_root: str,
    pipeline_root: str,
    run_id: str,
    jax_cache_dir: str,
    timeout_hours: float,
    machine: list,
    custom_job: dict,
    project: str,
    location: str,
    model: Output[Model],
    training_metrics: Output[Metrics],
    loss_curves: Output[HTML],
    gcp_resources: OutputPath(str),
    category: str = "",
    init_model: Input[Model] = None,
):
    """``train``'s stage as a Vertex AI custom job: every host runs ``calrec train`` on the
    dataset, work folder and Stage I export by their gs:// URIs, with the stage's TrainConfig
    written next to the work folder; this task (on a small CPU machine) waits, then copies
    the export into ``model`` and records what ``train`` records plus the job and its pools.

    ``custom_job`` holds the workers' machine_type, replica_count, accelerator_type,
    accelerator_count, tpu_topology, service_account, network and worker_image; ``project``
    and ``location`` are the pipeline run's (Vertex AI fills them in). ``gcp_resources``
    names the job, so cancelling the run cancels it (so does SIGTERM to this step).
    """
    import dataclasses
    import json
    import logging

    from calrec_core import storage
    from calrec_core.experiment import ExperimentConfig
    from calrec_core.experiment.steps import stage_name, stage_train_config
    from calrec_core.train.stages import StageResult
    from components.custom_job import (
        WorkerPool,
        custom_job_body,
        pool_metadata,
        run_custom_job,
        train_command,
    )
    from components.runtime import (
        compilation_cache_dir,
        deadline,
        export_model,
        gcs_uri,
        json_metadata,
        record_trained_model,
        resolved_project_location,
        work_dir,
    )

    logging.basicConfig(level=logging.INFO)
    config = ExperimentConfig.from_dict(json.loads(experiment))
    task = stage_name(stage, category)
    work = work_dir(checkpoint_root, pipeline_root, run_id, task, model.path)
    work_uri, data_uri = gcs_uri(str(work)), gcs_uri(dataset.uri)
    remote = [name for name, uri in (("work folder", work_uri), ("dataset", data_uri))
              if not storage.is_remote(uri)]
    if remote:
        raise ValueError(f"training on a Vertex AI custom job needs the {' and '.join(remote)} "
                         f"on Cloud Storage (got {work_uri}, {data_uri}): run the pipeline "
                         "with a gs:// pipeline root or checkpoint_root")
    init = ""
    if init_model is not None:
        init = gcs_uri(init_model.uri)
        subdir = init_model.metadata.get("checkpoint_subdir", ".")
        init = init if subdir in ("", ".") else storage.join(init, subdir)
    train_config = stage_train_config(config, stage)
    config_uri = f"{work_uri.rstrip('/')}.train-config.json"
    storage.write_atomic(config_uri, json.dumps(train_config.to_dict(), indent=2))
    cache = gcs_uri(compilation_cache_dir(jax_cache_dir, checkpoint_root, pipeline_root))
    command = train_command(stage, data_uri, work_uri, config_uri, category=category,
                            init=init, compilation_cache=cache)
    project, location = resolved_project_location(project, location)
    labels = {"calrec-stage": str(stage)}
    if run_id.replace("-", "").isalnum() and run_id.islower() and len(run_id) <= 63:
        labels["pipeline-run"] = run_id
    # Parameters inside a dict reach the step as text once the backend fills them in.
    machines = WorkerPool(machine_type=custom_job["machine_type"],
                          replica_count=int(custom_job["replica_count"]),
                          accelerator_type=custom_job["accelerator_type"],
                          accelerator_count=int(custom_job["accelerator_count"]),
                          tpu_topology=custom_job["tpu_topology"])
    body = custom_job_body(
        f"calrec-{task}"[:128], custom_job["worker_image"], command,
        **dataclasses.asdict(machines),
        service_account=custom_job["service_account"], network=custom_job["network"],
        timeout_seconds=float(timeout_hours) * 3600.0, base_output_directory=work_uri,
        labels=labels,
        # One host restarting alone would wait forever for the others: restart them all
        # (training resumes from the work folder's checkpoints).
        restart_job_on_worker_restart=True,
    )
    # An endpoint other than the region's (a private one) may come with the machines.
    endpoint = custom_job.get("api_endpoint") or None
    with deadline(timeout_hours, task):
        job = run_custom_job(body, project=project, location=location, api_endpoint=endpoint,
                             api_transport="rest" if (endpoint or "").startswith("http")
                             else None,
                             poll_seconds=float(custom_job.get("poll_seconds", 30)),
                             gcp_resources=gcp_resources,
                             on_state=lambda state: logging.info("%s: %s", task, state))
    fields = {field.name for field in dataclasses.fields(StageResult)}
    written = json.loads(storage.path(storage.join(work_uri, "result.json")).read_text())
    result = StageResult(**{key: value for key, value in written.items() if key in fields})
    export_model(result.checkpoint_dir, model.path)
    record_trained_model(model, training_metrics, loss_curves, stage=stage, category=category,
                         init_model=init_model, machine=machine,
                         train_config=train_config.to_dict(), result=result, work=work_uri)
    model.metadata["custom_job"] = job.name
    model.metadata["worker_pools"] = json_metadata(pool_metadata(body))
    model.metadata["hosts"] = machines.hosts  # = JAX processes

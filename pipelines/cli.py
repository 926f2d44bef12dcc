"""``calrec pipeline run-local|compile|upload|submit|status|cancel|schedule``: the KFP pipeline
from the shell.

The experiment is built as ``calrec experiment`` builds it (``--preset``, ``--config``,
``--roles``, ``--set section.field=value``) and passed as the pipeline's one ``experiment``
parameter (compile: its default); ``--param NAME=VALUE`` sets the operational parameters.
"""

from __future__ import annotations

import argparse
import functools
import json

from calrec_core.experiment.cli import add_experiment_arguments

DEFAULT_DATA_DIR = "data/sample/amazon2018"
# Of run-local and compile, without --preset or a preset in --config.
DEFAULT_PRESET = "demo"


def _assignment(text: str) -> tuple[str, object]:
    """``name=value`` with the value read as YAML (numbers, lists and mappings keep types)."""
    import yaml

    name, sep, raw = text.partition("=")
    if not sep or not name.strip():
        raise argparse.ArgumentTypeError(f"expected name=value, got {text!r}")
    return name.strip(), yaml.safe_load(raw) if raw.strip() else ""


def _label(text: str) -> tuple[str, str]:
    name, sep, value = text.partition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected key=value, got {text!r}")
    return name, value


def _add_build_arguments(parser: argparse.ArgumentParser) -> None:
    add_experiment_arguments(parser, f"the --config file's, else {DEFAULT_PRESET}")
    parser.add_argument("--categories", nargs="+", default=None,
                        help="evaluation categories (default: every 'eval' role)")


def _experiment(args: argparse.Namespace, base=None):
    """The ExperimentConfig of --preset/--config/--roles/--set. Without --preset and --config,
    ``base`` (a compiled template's experiment) is the starting point, and None is returned
    when nothing is asked for at all; without a base, the start is DEFAULT_PRESET."""
    import dataclasses

    from calrec_core.data.config import load_roles_config
    from calrec_core.experiment import apply_overrides, load_experiment

    if base is not None and not (args.preset or args.config):
        if not (args.set or args.roles):
            return None
        config = apply_overrides(base, args.set)
    else:
        config = load_experiment(args.preset, args.config, args.set,
                                 default_preset=base.preset if base else DEFAULT_PRESET)
    if args.roles:
        try:
            roles = load_roles_config(args.roles)
        except FileNotFoundError as error:
            raise ValueError(str(error)) from None
        config = dataclasses.replace(config, roles=roles)
    return config


def _local_experiment(args: argparse.Namespace, command: str):
    try:
        return _experiment(args)
    except ValueError as error:
        raise SystemExit(f"calrec pipeline {command}: {error}") from None


def _operational(parameters: list[tuple[str, object]]) -> dict:
    values = dict(parameters)
    if "experiment" in values:
        raise ValueError("set the experiment with --preset, --config, --roles and --set, not "
                         "--param experiment=...")
    return values


def _run_local(args: argparse.Namespace) -> int:
    from pipelines.local import run_local

    experiment = _local_experiment(args, "run-local")
    try:
        result = run_local(args.data, experiment, args.output, categories=args.categories,
                           parameters=_operational(args.param),
                           enable_caching=not args.no_cache)
    except ValueError as error:
        raise SystemExit(f"calrec pipeline run-local: {error}") from None
    print(f"Report: {result.report_markdown}\nHTML report: {result.report_html}\n"
          f"Artifacts: {result.pipeline_root}")
    return 0


def _build_options(args: argparse.Namespace):
    from components import ImageSet
    from pipelines.dag import BuildOptions

    experiment = _local_experiment(args, "compile")
    images = ImageSet.tagged(args.registry, args.tag) if args.registry else ImageSet()
    categories = tuple(args.categories) if args.categories else None
    return BuildOptions(experiment=experiment, categories=categories,
                        accelerator=args.accelerator, images=images, retries=args.retries,
                        training=args.training)


def _compile(args: argparse.Namespace) -> int:
    from pipelines.compile import compile_pipeline

    try:
        path = compile_pipeline(_build_options(args), args.output,
                                allow_placeholder_image=args.allow_placeholder_image)
    except ValueError as error:
        raise SystemExit(f"calrec pipeline compile: {error}") from None
    print(f"Pipeline spec: {path}")
    return 0


def _cloud_errors(handler):
    """Credential and API failures as one line on stderr (exit status 1), not a traceback."""

    @functools.wraps(handler)
    def run(args: argparse.Namespace) -> int:
        from google.api_core import exceptions as api_exceptions
        from google.auth import exceptions as auth_exceptions

        try:
            return handler(args)
        except auth_exceptions.DefaultCredentialsError as error:
            raise SystemExit(
                "calrec: no Google Cloud credentials (" + str(error).splitlines()[0].rstrip(".")
                + "); run `gcloud auth application-default login` or set "
                "GOOGLE_APPLICATION_CREDENTIALS to a service-account key file") from None
        except auth_exceptions.GoogleAuthError as error:
            raise SystemExit("calrec: Google Cloud credentials were refused: "
                             + " ".join(str(error).split())[:300]) from None
        except api_exceptions.GoogleAPICallError as error:
            raise SystemExit(f"calrec: Vertex AI answered {error.code}: "
                             + " ".join(str(error.message).split())[:300]) from None
        except ValueError as error:
            raise SystemExit(f"calrec: {error}") from None

    return run


def _target(args: argparse.Namespace):
    from pipelines.vertex import VertexTarget

    return VertexTarget(project=args.project, region=args.region,
                        api_endpoint=args.api_endpoint, api_transport=args.api_transport)


def _settings(args: argparse.Namespace):
    from pipelines.vertex import RunSettings

    return RunSettings(pipeline_root=args.pipeline_root, service_account=args.service_account,
                       network=args.network, encryption_key=args.encryption_key,
                       experiment=args.experiment)


def _job_options(args: argparse.Namespace) -> dict:
    parameters = _operational(args.param)
    experiment = _experiment(args, base=_template_experiment(args.template))
    if experiment is not None:
        from calrec_core.experiment.steps import as_parameter

        parameters["experiment"] = as_parameter(experiment)
    return {"parameter_values": parameters, "labels": dict(args.label),
            "enable_caching": args.cache, "display_name": args.display_name}


def _template_experiment(path: str):
    """The experiment a compiled template runs by default."""
    import yaml

    from pipelines.dag import compiled_experiment

    try:
        with open(path, encoding="utf-8") as stream:
            return compiled_experiment(yaml.safe_load(stream))
    except (OSError, yaml.YAMLError, TypeError, KeyError) as error:
        raise ValueError(f"{path} is not a readable compiled calrec pipeline ({error})") from None


def _print_status(status: dict) -> None:
    tasks = ", ".join(f"{task['task']}={task['state'].removeprefix('PIPELINE_TASK_')}"
                      for task in status["tasks"])
    print(f"{status['state'].removeprefix('PIPELINE_STATE_')}" + (f"  [{tasks}]" if tasks
                                                                   else ""), flush=True)


def _submit(args: argparse.Namespace) -> int:
    from pipelines.vertex import submit_pipeline, wait_for_run

    target = _target(args)
    name = submit_pipeline(target, _settings(args), args.template, **_job_options(args))
    print(f"Pipeline job: {name}\nConsole: {target.console_url(name)}", flush=True)
    if not args.wait:
        return 0
    status = wait_for_run(target, name, poll_seconds=args.poll_seconds,
                          on_change=_print_status)
    if status["state"] != "PIPELINE_STATE_SUCCEEDED":
        print(f"Run ended {status['state']}: {status.get('error', '')}".rstrip(": "))
        return 1
    return 0


def _status(args: argparse.Namespace) -> int:
    from pipelines.vertex import run_status

    print(json.dumps(run_status(_target(args), args.run), indent=2))
    return 0


def _cancel(args: argparse.Namespace) -> int:
    from pipelines.vertex import cancel_run

    target = _target(args)
    cancel_run(target, args.run)
    print(f"Cancelling {target.run_name(args.run)} (follow it with `calrec pipeline status`)")
    return 0


def _upload(args: argparse.Namespace) -> int:
    from pipelines.registry import upload_template

    package, version = upload_template(args.host, args.template, args.tag,
                                       api_endpoint=args.api_endpoint)
    print(f"Uploaded {package} {version} to {args.host} with tags {args.tag}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from pipelines import vertex

    target = _target(args)
    if args.action == "create":
        name = vertex.create_schedule(target, _settings(args), args.template, args.cron,
                                      schedule_name=args.name, max_run_count=args.max_runs,
                                      **_job_options(args))
        print(f"Schedule: {name}")
    elif args.action == "list":
        pipeline = None if args.any_pipeline else args.pipeline_name
        for schedule in vertex.list_schedules(target, args.filter, pipeline_name=pipeline):
            print(json.dumps(schedule))
    else:
        getattr(vertex, f"{args.action}_schedule")(target, args.schedule)
        print(f"Schedule {args.schedule}: {args.action}d")
    return 0


def _add_target_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument("--region", default="us-central1", help="Vertex AI region")
    parser.add_argument("--api-endpoint", default=None,
                        help="Vertex AI API endpoint (default: the region's public endpoint)")
    parser.add_argument("--api-transport", default=None, choices=("grpc", "rest"),
                        help="Vertex AI API transport (default: the SDK's)")


def _add_run_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--template", required=True, help="compiled pipeline YAML")
    parser.add_argument("--pipeline-root", required=True, help="gs:// folder for artifacts")
    parser.add_argument("--service-account", required=True,
                        help="service account the steps run as")
    parser.add_argument("--network", default=None,
                        help="VPC peered with Vertex AI: projects/NUMBER/global/networks/NAME")
    parser.add_argument("--encryption-key", default=None,
                        help="Cloud KMS key (CMEK), projects/P/locations/REGION/keyRings/R/"
                             "cryptoKeys/K")
    parser.add_argument("--experiment", default=None,
                        help="Vertex AI Experiment to register runs in (created if absent)")
    parser.add_argument("--param", action="append", type=_assignment, default=[],
                        metavar="NAME=VALUE",
                        help="operational pipeline parameter, e.g. raw_data_uri=gs://B/raw "
                             "(value read as YAML)")
    add_experiment_arguments(parser, "the template's experiment")
    parser.add_argument("--label", action="append", type=_label, default=[],
                        metavar="KEY=VALUE", help="resource label")
    parser.add_argument("--display-name", default="calrec", help="run display name")
    parser.add_argument("--cache", default=None, action=argparse.BooleanOptionalAction,
                        help="force step caching on/off (default: the compiled settings; "
                             "the raw-data version step always runs)")


def register(subparsers) -> None:
    pipeline = subparsers.add_parser("pipeline", help="run, compile and deploy the KFP pipeline")
    commands = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")

    run_local = commands.add_parser("run-local", help="run the whole DAG with KFP's local runner")
    _add_build_arguments(run_local)
    run_local.add_argument("--output", required=True, help="folder for the run's outputs")
    run_local.add_argument("--data", default=DEFAULT_DATA_DIR, metavar="DIR",
                           help=f"folder of raw Amazon files (default {DEFAULT_DATA_DIR})")
    run_local.add_argument("--param", action="append", type=_assignment, default=[],
                           metavar="NAME=VALUE",
                           help="operational pipeline parameter, e.g. beam_args=[...] "
                                "(value read as YAML)")
    run_local.add_argument("--no-cache", action="store_true", help="re-run every step")
    run_local.set_defaults(handler=_run_local)

    compile_ = commands.add_parser("compile", help="write the pipeline spec YAML")
    _add_build_arguments(compile_)
    compile_.add_argument("--output", required=True, help="pipeline spec path (.yaml)")
    compile_.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu", "tpu"),
                          help="devices (and image) of the training and evaluation steps; "
                               "tpu needs --training custom_job (pipeline steps get no TPUs: "
                               "a tpu build evaluates on a GPU step)")
    compile_.add_argument("--training", default="container", choices=("container", "custom_job"),
                          help="container: each training step trains in its own task (one "
                               "host); custom_job: it launches a Vertex AI custom job on the "
                               "training_* parameters' machines (several hosts, a TPU slice) "
                               "and waits")
    compile_.add_argument("--registry", default=None,
                          help="image registry, e.g. us-docker.pkg.dev/PROJECT/calrec "
                               "(default: the CALREC_*_IMAGE environment variables)")
    compile_.add_argument("--tag", default="latest", help="image tag used with --registry")
    compile_.set_defaults(handler=_compile)

    compile_.add_argument("--allow-placeholder-image", action="store_true",
                          help="compile even if an image still names the placeholder project")
    compile_.add_argument("--retries", type=int, default=2,
                          help="retries (with back-off) of each training/evaluation task")

    upload = commands.add_parser(
        "upload", help="upload a compiled pipeline to an Artifact Registry Kubeflow repository")
    upload.add_argument("--host", required=True,
                        help="https://REGION-kfp.pkg.dev/PROJECT/REPOSITORY")
    upload.add_argument("--template", required=True, help="compiled pipeline YAML")
    upload.add_argument("--tag", action="append", default=[], help="version tag (repeatable)")
    upload.add_argument("--api-endpoint", default=None,
                        help="send the upload to this base URL instead of the host")
    upload.set_defaults(handler=_cloud_errors(_upload))

    submit = commands.add_parser("submit", help="create a Vertex AI pipeline run")
    _add_target_arguments(submit)
    _add_run_arguments(submit)
    submit.add_argument("--wait", action="store_true",
                        help="follow the run until it ends (exit status 1 unless it succeeds)")
    submit.add_argument("--poll-seconds", type=float, default=30.0,
                        help="seconds between state checks with --wait")
    submit.set_defaults(handler=_cloud_errors(_submit))

    for action, (handler, text) in {"status": (_status, "a run's state and task states"),
                                    "cancel": (_cancel, "cancel a run")}.items():
        command = commands.add_parser(action, help=text)
        command.add_argument("run", metavar="RUN", help="pipeline job resource name or id")
        _add_target_arguments(command)
        command.set_defaults(handler=_cloud_errors(handler))

    schedule = commands.add_parser("schedule", help="recurring retraining on Vertex AI")
    actions = schedule.add_subparsers(dest="action", required=True, metavar="ACTION")
    create = actions.add_parser("create", help="a cron schedule of runs")
    _add_target_arguments(create)
    _add_run_arguments(create)
    create.add_argument("--cron", required=True, help="e.g. 'TZ=Etc/UTC 0 3 * * 1'")
    create.add_argument("--name", default="calrec-retrain", help="schedule display name")
    create.add_argument("--max-runs", type=int, default=None, help="stop after this many runs")
    list_ = actions.add_parser("list", help="the region's calrec schedules")
    _add_target_arguments(list_)
    list_.add_argument("--filter", default=None,
                       help='Vertex AI filter, e.g. \'display_name="calrec-weekly"\' or '
                            '\'state="PAUSED"\'')
    list_.add_argument("--pipeline-name", default="calrec",
                       help="list schedules of this pipeline (the compiled pipeline name)")
    list_.add_argument("--any-pipeline", action="store_true",
                       help="list schedules of every pipeline")
    for action in ("pause", "resume", "delete"):
        command = actions.add_parser(action, help=f"{action} a schedule")
        command.add_argument("schedule", metavar="SCHEDULE",
                             help="schedule resource name or id")
        _add_target_arguments(command)
    for command in actions.choices.values():
        command.set_defaults(handler=_cloud_errors(_schedule))

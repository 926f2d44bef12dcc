"""``calrec pipeline run-local|compile|submit|schedule``: the KFP pipeline from the shell."""

from __future__ import annotations

import argparse
import json
import pathlib

DEFAULT_DATA_DIR = "data/sample/amazon2018"
DEFAULT_ROLES = "configs/sample.yaml"


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


def _load_roles(path: str) -> dict:
    import yaml

    from calrec_core.data import roles_config_from_dict

    roles_path = pathlib.Path(path)
    if not roles_path.is_file():
        raise SystemExit(f"roles config {path} not found (run from the repository root or "
                         "pass --roles)")
    roles = yaml.safe_load(roles_path.read_text(encoding="utf-8"))
    roles_config_from_dict(roles, source=path)
    return roles


def _add_build_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--preset", default="demo", choices=("tiny", "demo", "paper"),
                        help="preset giving the pipeline parameters' defaults")
    parser.add_argument("--roles", default=DEFAULT_ROLES, help="category roles YAML")
    parser.add_argument("--categories", nargs="+", default=None,
                        help="evaluation categories (default: every 'eval' role)")


def _run_local(args: argparse.Namespace) -> int:
    from pipelines.local import run_local

    result = run_local(
        args.data_dir, _load_roles(args.roles), args.output, preset=args.preset,
        categories=args.categories, parameters=dict(args.param),
        enable_caching=not args.no_cache,
    )
    print(f"Report: {result.report_markdown}\nHTML report: {result.report_html}\n"
          f"Artifacts: {result.pipeline_root}")
    return 0


def _build_options(args: argparse.Namespace):
    from components import ImageSet
    from pipelines.dag import BuildOptions, eval_categories

    roles = _load_roles(args.roles)
    images = ImageSet.tagged(args.registry, args.tag) if args.registry else ImageSet()
    return BuildOptions(categories=tuple(args.categories or eval_categories(roles)), roles=roles,
                        preset=args.preset, accelerator=args.accelerator, images=images)


def _compile(args: argparse.Namespace) -> int:
    from pipelines.compile import compile_pipeline

    path = compile_pipeline(_build_options(args), args.output)
    print(f"Pipeline spec: {path}")
    return 0


def _target(args: argparse.Namespace):
    from pipelines.vertex import VertexTarget

    return VertexTarget(project=args.project, region=args.region,
                        pipeline_root=args.pipeline_root, service_account=args.service_account,
                        api_endpoint=args.api_endpoint, api_transport=args.api_transport)


def _job_options(args: argparse.Namespace) -> dict:
    return {"parameter_values": dict(args.param), "labels": dict(args.label),
            "enable_caching": args.cache, "display_name": args.display_name}


def _submit(args: argparse.Namespace) -> int:
    from pipelines.vertex import submit_pipeline

    name = submit_pipeline(_target(args), args.template, **_job_options(args))
    print(f"Pipeline job: {name}")
    return 0


def _schedule(args: argparse.Namespace) -> int:
    from pipelines import vertex

    target = _target(args)
    if args.action == "create":
        if not args.cron:
            raise SystemExit("schedule create needs --cron")
        name = vertex.create_schedule(target, args.template, args.cron, schedule_name=args.name,
                                      max_run_count=args.max_runs, **_job_options(args))
        print(f"Schedule: {name}")
    elif args.action == "list":
        for schedule in vertex.list_schedules(target, args.name):
            print(json.dumps(schedule))
    else:
        if not args.schedule:
            raise SystemExit(f"schedule {args.action} needs --schedule (resource name or id)")
        getattr(vertex, f"{args.action}_schedule")(target, args.schedule)
        print(f"Schedule {args.schedule}: {args.action}d")
    return 0


def _add_vertex_arguments(parser: argparse.ArgumentParser, needs_template: bool) -> None:
    parser.add_argument("--project", required=True, help="Google Cloud project id")
    parser.add_argument("--region", default="us-central1", help="Vertex AI region")
    parser.add_argument("--pipeline-root", required=True, help="gs:// folder for artifacts")
    parser.add_argument("--service-account", required=True,
                        help="service account the steps run as")
    parser.add_argument("--api-endpoint", default=None,
                        help="Vertex AI API endpoint (default: the region's public endpoint)")
    parser.add_argument("--api-transport", default=None, choices=("grpc", "rest"),
                        help="Vertex AI API transport (default: the SDK's)")
    parser.add_argument("--template", required=needs_template, help="compiled pipeline YAML")
    parser.add_argument("--param", action="append", type=_assignment, default=[],
                        metavar="NAME=VALUE", help="pipeline parameter (value read as YAML)")
    parser.add_argument("--label", action="append", type=_label, default=[],
                        metavar="KEY=VALUE", help="resource label")
    parser.add_argument("--display-name", default="calrec", help="run display name")
    parser.add_argument("--cache", default=None, action=argparse.BooleanOptionalAction,
                        help="force step caching on/off (default: the compiled settings for "
                             "submit, off for schedules)")


def register(subparsers) -> None:
    pipeline = subparsers.add_parser("pipeline", help="run, compile and deploy the KFP pipeline")
    commands = pipeline.add_subparsers(dest="pipeline_command", required=True, metavar="ACTION")

    run_local = commands.add_parser("run-local", help="run the whole DAG with KFP's local runner")
    _add_build_arguments(run_local)
    run_local.add_argument("--output", required=True, help="folder for the run's outputs")
    run_local.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="raw Amazon files")
    run_local.add_argument("--param", action="append", type=_assignment, default=[],
                           metavar="NAME=VALUE", help="pipeline parameter (value read as YAML)")
    run_local.add_argument("--no-cache", action="store_true", help="re-run every step")
    run_local.set_defaults(handler=_run_local)

    compile_ = commands.add_parser("compile", help="write the pipeline spec YAML")
    _add_build_arguments(compile_)
    compile_.add_argument("--output", required=True, help="pipeline spec path (.yaml)")
    compile_.add_argument("--accelerator", default="cpu", choices=("cpu", "gpu", "tpu"),
                          help="devices (and image) of the training and evaluation steps")
    compile_.add_argument("--registry", default=None,
                          help="image registry, e.g. us-docker.pkg.dev/PROJECT/calrec "
                               "(default: the CALREC_*_IMAGE environment variables)")
    compile_.add_argument("--tag", default="latest", help="image tag used with --registry")
    compile_.set_defaults(handler=_compile)

    submit = commands.add_parser("submit", help="create a Vertex AI pipeline run")
    _add_vertex_arguments(submit, needs_template=True)
    submit.set_defaults(handler=_submit)

    schedule = commands.add_parser("schedule", help="recurring retraining on Vertex AI")
    schedule.add_argument("action", choices=("create", "list", "pause", "resume", "delete"))
    _add_vertex_arguments(schedule, needs_template=False)
    schedule.add_argument("--cron", default=None, help="e.g. 'TZ=Etc/UTC 0 3 * * 1' (create)")
    schedule.add_argument("--name", default="calrec-retrain",
                          help="schedule display name (create; filter for list)")
    schedule.add_argument("--schedule", default=None,
                          help="schedule resource name or id (pause, resume, delete)")
    schedule.add_argument("--max-runs", type=int, default=None,
                          help="stop after this many runs (create)")
    schedule.set_defaults(handler=_schedule)

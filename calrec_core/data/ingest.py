"""``run_ingest``: validate config and files, build the Beam pipeline, run it, return stats.

Config and missing/empty-file problems raise before the pipeline is built, naming the
file. Beam options (runner, workers) pass through unchanged; the default is DirectRunner.

Dataflow: ``-- --runner DataflowRunner --project P --region R --temp_location gs://...`` runs
the same stages on Dataflow and waits for the job, so the stats and the marker below are
handled through Beam's FileSystems on ``gs://`` exactly as on local folders. Workers start from
the project's ingest image (``--sdk_container_image``, else ``$CALREC_INGEST_IMAGE``), which
already holds calrec; see ``dataflow_worker_args``.

Completeness: an ``INCOMPLETE`` marker is written into the output folder before anything else
and removed only when the run succeeded, so a crashed, killed or refused run never leaves
output that looks complete; the readers (``calrec_core.data.reader``) refuse a marked folder.
A category that ends with no users fails the run (``allow_empty_categories`` accepts it).
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence

from calrec_core.data.config import RolesConfig, load_roles_config
from calrec_core.data.reader import CORPUS_FILE, INCOMPLETE_FILE, MIXTURE_FILE, STATS_FILE
from calrec_core.errors import CalrecError, InputError
from calrec_core.folder_lock import folder_lock

# The ingest image the Dataflow workers start from when --sdk_container_image is not given.
WORKER_IMAGE_ENV = "CALREC_INGEST_IMAGE"
# What ReadLinesFn raises for a damaged stream, found again in the runner's wrapped error.
_INPUT_ERROR = re.compile(r"[^\s'\"]+: unreadable after line \d+: [^\n'\"\[\]]*")


def add_ingestion_stages(pipeline, sources, config: RolesConfig, output_dir: str,
                         spread_chunks: bool = False, file_parts: int = 1):
    """Adds every ingestion stage to ``pipeline``; returns the stats PCollection.

    spread_chunks, file_parts: how a file is shared between workers (see ReadReviews);
    run_ingest picks them for the runner (``file_sharing``).
    """
    import apache_beam as beam

    from calrec_core.data import transforms as t

    sharing = {"spread_chunks": spread_chunks, "file_parts": file_parts}
    reviews = pipeline | "ReadReviews" >> t.ReadReviews(sources, **sharing)
    metadata = pipeline | "ReadMetadata" >> t.ReadMetadata(sources, **sharing)
    sequences = reviews["reviews"] | "BuildUserSequences" >> t.BuildUserSequences(
        sources, config.seed)
    items_before_filter = sequences[t.ITEMS_BEFORE_FILTER] | (
        "CountItemsBeforeFilter" >> t.CountItemsBeforeFilter())
    corpus = {"sequences": sequences.sequences, "items": metadata["items"]} | (
        "BuildCorpus" >> t.BuildCorpus())
    mixture = sequences.sequences | "ComputeMixture" >> t.ComputeMixture(
        sources, config.mixture_exponent)
    shard_counts = {"sequences": sequences.sequences, "corpus": corpus} | (
        "WriteTFRecords" >> t.WriteTFRecords(output_dir, sources, config.records_per_shard))
    corpus_counts = corpus | "WriteCorpus" >> t.WriteCorpus(output_dir, sources)
    _ = (reviews[t.DEAD_LETTER], metadata[t.DEAD_LETTER]) | (
        "FlattenDeadLetters" >> beam.Flatten()) | "WriteDeadLetters" >> t.WriteDeadLetters(
        output_dir)
    counts = (
        reviews[t.COUNTS], metadata[t.COUNTS], sequences[t.COUNTS], items_before_filter,
        shard_counts, corpus_counts,
    ) | "FlattenCounters" >> beam.Flatten()
    return {"counts": counts, "mixture": mixture} | "WriteStats" >> t.WriteStats(
        output_dir, sources)


def _remove_previous_outputs(output_dir: str) -> None:
    """Deletes files an earlier ingest left here, of every category (not only this run's), so
    the folder ends with exactly this run's categories and no stale shard mixes with new ones."""
    from apache_beam.io.filesystems import FileSystems

    patterns = [FileSystems.join(output_dir, name) for name in (STATS_FILE, MIXTURE_FILE)]
    patterns.append(FileSystems.join(output_dir, "dead_letter", "*.jsonl"))
    patterns.append(FileSystems.join(output_dir, "*", "*-of-*.tfrecord"))
    patterns.append(FileSystems.join(output_dir, "*", CORPUS_FILE))
    paths = [
        metadata.path
        for result in FileSystems.match(patterns)
        for metadata in result.metadata_list
    ]
    if paths:
        FileSystems.delete(paths)


def _input_error(error: BaseException) -> str | None:
    """The one-line message of an unreadable input file inside a runner's error, if any."""
    seen = error
    while seen is not None:
        if isinstance(seen, InputError):
            # In-process runners re-raise it with " [while running '<step>']" appended.
            return str(seen).split(" [while running")[0].splitlines()[0].strip()
        seen = seen.__cause__ or seen.__context__
    # Runners in other processes hand back the text only.
    match = _INPUT_ERROR.search(str(error))
    return match.group(0).strip() if match else None


def dataflow_args(project: str, region: str, temp_location: str, worker_image: str,
                  machine_type: str = "", max_workers: int = 0,
                  service_account: str = "") -> list[str]:
    """Beam options of a Dataflow run: where it runs, the workers' image (the ingest image, so
    workers import calrec without building anything) and their size; empty values are left
    to Dataflow's defaults. An empty ``project`` means no Dataflow: []."""
    if not project:
        return []
    missing = [name for name, value in (("region", region), ("temp_location", temp_location),
                                        ("worker_image", worker_image)) if not value]
    if missing:
        raise CalrecError(f"a Dataflow ingestion in project {project} needs {missing}")
    args = ["--runner=DataflowRunner", f"--project={project}", f"--region={region}",
            f"--temp_location={temp_location}", f"--sdk_container_image={worker_image}"]
    if machine_type:
        args.append(f"--machine_type={machine_type}")
    if max_workers:
        args.append(f"--max_num_workers={int(max_workers)}")
    if service_account:
        args.append(f"--service_account_email={service_account}")
    return args


def _runs_on_dataflow(options) -> bool:
    from apache_beam.options.pipeline_options import StandardOptions

    return "dataflow" in (options.view_as(StandardOptions).runner or "").lower()


def dataflow_worker_args(beam_args: Sequence[str]) -> list[str]:
    """``beam_args``, with the workers' container image added for a Dataflow run.

    Dataflow workers must import calrec. They start from ``--sdk_container_image`` (the
    calrec-ingest image: calrec and its locked dependencies, nothing built at start-up) or,
    when it is not given, from ``$CALREC_INGEST_IMAGE``. An explicit ``--setup_file`` is left
    alone. With neither, this refuses before anything is written or staged: a default Beam
    container would fail on every worker at the first calrec import.
    """
    from apache_beam.options.pipeline_options import (
        PipelineOptions,
        SetupOptions,
        WorkerOptions,
    )

    args = list(beam_args)
    options = PipelineOptions(args)
    if not _runs_on_dataflow(options):
        return args
    worker = options.view_as(WorkerOptions)
    if (worker.sdk_container_image or worker.worker_harness_container_image
            or options.view_as(SetupOptions).setup_file):
        return args
    image = os.environ.get(WORKER_IMAGE_ENV)
    if image:
        return [*args, f"--sdk_container_image={image}"]
    raise CalrecError(
        "Dataflow workers need calrec: pass --sdk_container_image=REGISTRY/calrec-ingest:TAG "
        f"after `--` (or set {WORKER_IMAGE_ENV})")


def check_running_mode(options) -> None:
    """Refuses Beam settings under which the runner can drop elements without an error.

    Beam's time-based output buffering (DirectRunner ``multi_threading`` mode, which buffers
    1 s; or the ``data_buffer_time_limit_ms`` experiment) flushes from a timer thread while
    the bundle's thread keeps writing: what it writes between the flush's snapshot and its
    clear is lost. An ingest of a million reviews lost reviews that way (its accounting
    caught it). ``multi_processing`` workers and Dataflow do not buffer by time.
    """
    from apache_beam.options.pipeline_options import DebugOptions, DirectOptions

    if options.view_as(DirectOptions).direct_running_mode == "multi_threading":
        raise CalrecError(
            "--direct_running_mode=multi_threading can drop elements (Beam's timed output "
            "flush races the writer); use --direct_running_mode=multi_processing")
    for experiment in options.view_as(DebugOptions).experiments or []:
        if experiment.startswith("data_buffer_time_limit_ms="):
            raise CalrecError(
                f"--experiments={experiment} can drop elements (Beam's timed output flush "
                "races the writer); leave it out")


def file_sharing(options) -> dict:
    """How each input file is shared between the run's workers (see ReadReviews): its chunks
    reshuffled on Dataflow; on a DirectRunner with N worker processes, N readers that each
    parse every N-th chunk; otherwise one reader."""
    from apache_beam.options.pipeline_options import DirectOptions

    if _runs_on_dataflow(options):
        return {"spread_chunks": True, "file_parts": 1}
    direct = options.view_as(DirectOptions)
    workers = direct.direct_num_workers or 1
    if direct.direct_running_mode == "multi_processing" and workers > 1:
        return {"spread_chunks": False, "file_parts": workers}
    return {"spread_chunks": False, "file_parts": 1}


def _check_output_dir(output_dir: str) -> None:
    import pathlib

    if "://" in output_dir:
        return
    path = pathlib.Path(output_dir)
    if path.exists() and not path.is_dir():
        raise CalrecError(f"output {output_dir} is a file, not a folder")
    for parent in path.parents:
        if parent.exists():
            if not parent.is_dir():
                raise CalrecError(f"output {output_dir}: {parent} is a file, not a folder")
            break


def _write_text(path: str, text: str) -> None:
    from apache_beam.io.filesystems import FileSystems

    with FileSystems.create(path) as stream:
        stream.write(text.encode("utf-8"))


def empty_categories(stats: dict) -> list[str]:
    return [name for name, counts in stats["categories"].items() if counts["users"] == 0]


def _empty_message(stats: dict, names: list[str]) -> str:
    details = []
    for name in names:
        counts = stats["categories"][name]
        details.append(f"{name} (read {counts['read']}, dead letter {counts['dead_letter']}, "
                       f"too short {counts['filtered_users']['too_short']} users, sampled out "
                       f"{counts['filtered_users']['user_sampled_out']} users)")
    return ("no users left in " + "; ".join(details)
            + "; see dead_letter/ in the output, or pass --allow-empty-categories")


def run_ingest(
    input_dir, config_path, output_dir, beam_args: Sequence[str] = (), config=None,
    allow_empty_categories: bool = False,
) -> dict:
    """Ingests ``input_dir`` per the roles YAML into ``output_dir``; returns the stats.

    ``config`` (a RolesConfig) may replace ``config_path`` (pass None) for presets. Raises
    ``CalrecError`` for an unreadable input file or (unless ``allow_empty_categories``) a
    category left without users; the output then stays marked incomplete.
    """

    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from calrec_core.data.sources import resolve_sources

    if config is None:
        config = load_roles_config(config_path)
    input_dir, output_dir = str(input_dir), str(output_dir)
    options = PipelineOptions(dataflow_worker_args(beam_args))
    check_running_mode(options)
    # Our own gs:// reads and writes (sources, marker, stats) use the run's options too.
    FileSystems.set_options(options)
    sources = resolve_sources(input_dir, config)
    _check_output_dir(output_dir)
    # One ingest per folder; taken after the checks above, which leave no folder behind.
    with folder_lock(output_dir, "ingest"):
        return _ingest_into(output_dir, sources, config, options, allow_empty_categories)


def _ingest_into(output_dir: str, sources, config: RolesConfig, options,
                 allow_empty_categories: bool) -> dict:
    """run_ingest's work once its inputs are checked and it holds ``output_dir``."""
    import json

    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems

    marker = FileSystems.join(output_dir, INCOMPLETE_FILE)
    _write_text(marker, "calrec ingest started here and has not finished\n")
    _remove_previous_outputs(output_dir)
    try:
        # Leaving the block waits for the run to finish (on Dataflow, for the job's end state).
        with beam.Pipeline(options=options) as pipeline:
            add_ingestion_stages(pipeline, sources, config, output_dir, **file_sharing(options))
    except Exception as error:
        message = _input_error(error)
        if message is None:
            raise
        _write_text(marker, message + "\n")
        raise InputError(message) from None
    with FileSystems.open(FileSystems.join(output_dir, STATS_FILE)) as stream:
        stats = json.loads(stream.read().decode("utf-8"))
    empty = empty_categories(stats)
    if empty and not allow_empty_categories:
        message = _empty_message(stats, empty)
        _write_text(marker, message + "\n")
        raise CalrecError(message)
    FileSystems.delete([marker])
    return stats

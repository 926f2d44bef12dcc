"""``run_ingest``: validate config and files, build the Beam pipeline, run it, return stats.

Config and missing/empty-file problems raise before the pipeline is built, naming the
file. Beam options (runner, workers) pass through unchanged; the default is DirectRunner.
"""

from __future__ import annotations

from collections.abc import Sequence

from calrec_core.data.config import RolesConfig, load_roles_config
from calrec_core.data.reader import CORPUS_FILE, MIXTURE_FILE, STATS_FILE


def build_pipeline(pipeline, sources, config: RolesConfig, output_dir: str):
    """Adds every ingestion stage to ``pipeline``; returns the stats PCollection."""
    import apache_beam as beam

    from calrec_core.data import transforms as t

    reviews = pipeline | "ReadReviews" >> t.ReadReviews(sources)
    metadata = pipeline | "ReadMetadata" >> t.ReadMetadata(sources)
    sequences = reviews["reviews"] | "BuildUserSequences" >> t.BuildUserSequences(
        sources, config.seed)
    corpus = {"sequences": sequences.sequences, "items": metadata["items"]} | (
        "BuildCorpus" >> t.BuildCorpus())
    examples = {"sequences": sequences.sequences, "corpus": corpus} | (
        "SplitByRole" >> t.SplitByRole(sources))
    mixture = sequences.sequences | "ComputeMixture" >> t.ComputeMixture(
        sources, config.mixture_exponent)
    shard_counts = examples | "WriteTFRecords" >> t.WriteTFRecords(
        output_dir, sources, config.records_per_shard)
    corpus_counts = corpus | "WriteCorpus" >> t.WriteCorpus(output_dir, sources)
    _ = (reviews[t.DEAD_LETTER], metadata[t.DEAD_LETTER]) | (
        "FlattenDeadLetters" >> beam.Flatten()) | "WriteDeadLetters" >> t.WriteDeadLetters(
        output_dir)
    counts = (
        reviews[t.COUNTS], metadata[t.COUNTS], sequences[t.COUNTS], shard_counts, corpus_counts
    ) | "FlattenCounters" >> beam.Flatten()
    return {"counts": counts, "mixture": mixture} | "WriteStats" >> t.WriteStats(
        output_dir, sources)


def _remove_previous_outputs(output_dir: str, sources) -> None:
    """Deletes files an earlier ingest left here, so no stale shard mixes with new ones."""
    from apache_beam.io.filesystems import FileSystems

    patterns = [FileSystems.join(output_dir, name) for name in (STATS_FILE, MIXTURE_FILE)]
    patterns.append(FileSystems.join(output_dir, "dead_letter", "*.jsonl"))
    for source in sources:
        patterns.append(FileSystems.join(output_dir, source.name, "*-of-*.tfrecord"))
        patterns.append(FileSystems.join(output_dir, source.name, CORPUS_FILE))
    paths = [
        metadata.path
        for result in FileSystems.match(patterns)
        for metadata in result.metadata_list
    ]
    if paths:
        FileSystems.delete(paths)


def run_ingest(
    input_dir, config_path, output_dir, beam_args: Sequence[str] = (), config=None
) -> dict:
    """Ingests ``input_dir`` per the roles YAML into ``output_dir``; returns the stats.

    ``config`` (a RolesConfig) may replace ``config_path`` (pass None) for presets.
    """
    import json

    import apache_beam as beam
    from apache_beam.io.filesystems import FileSystems
    from apache_beam.options.pipeline_options import PipelineOptions

    from calrec_core.data.sources import resolve_sources

    if config is None:
        config = load_roles_config(config_path)
    input_dir, output_dir = str(input_dir), str(output_dir)
    sources = resolve_sources(input_dir, config)
    _remove_previous_outputs(output_dir, sources)
    options = PipelineOptions(list(beam_args))
    with beam.Pipeline(options=options) as pipeline:
        build_pipeline(pipeline, sources, config, output_dir)
    with FileSystems.open(FileSystems.join(output_dir, STATS_FILE)) as stream:
        return json.loads(stream.read().decode("utf-8"))

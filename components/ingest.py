"""Ingest step: raw Amazon files -> per-category splits, catalog and stats (Apache Beam)."""

from kfp.dsl import Dataset, Metrics, Output


def ingest(
    raw_data_uri: str,
    roles: dict,
    beam_args: list,
    raw_data_version: str,
    dataset: Output[Dataset],
    ingest_metrics: Output[Metrics],
):
    """Runs calrec_core.data.run_ingest; ``roles`` is the YAML roles mapping as a dict.

    ``raw_data_version`` names the snapshot of the raw files (a content hash or a date): the
    step only records it, but it is part of the cache key, so new data is never served stale.
    With a remote Beam runner (Dataflow) the job reads and writes Cloud Storage URIs directly.
    """
    from calrec_core.data import load_stats, roles_config_from_dict, run_ingest

    summary_keys = ("users", "items", "purchases", "examples", "dead_letter",
                     "metadata_dead_letter", "items_without_metadata", "filtered_users")
    from components.runtime import (
        beam_runner_is_remote,
        json_metadata,
        local_path,
        log_numbers,
        restore_integers,
    )

    roles = restore_integers(roles)
    config = roles_config_from_dict(roles, source="pipeline parameter 'roles'")
    remote = beam_runner_is_remote(beam_args)
    input_dir = raw_data_uri if remote else local_path(raw_data_uri)
    output_dir = dataset.uri if remote else dataset.path
    run_ingest(input_dir, None, output_dir, beam_args=tuple(beam_args), config=config)
    stats = load_stats(dataset.path)
    # The headline counts per category (stats.json in the artifact holds everything).
    summary = {
        name: {key: counts.get(key) for key in summary_keys if key in counts}
        for name, counts in stats.get("categories", {}).items()
    }
    dataset.metadata["roles"] = json_metadata(roles)
    dataset.metadata["raw_data_uri"] = raw_data_uri
    dataset.metadata["raw_data_version"] = raw_data_version
    dataset.metadata["categories"] = json_metadata(summary)
    log_numbers(ingest_metrics, summary)

"""Ingest step: raw Amazon files -> per-category splits, catalog and stats (Apache Beam)."""

from kfp.dsl import Dataset, Input, Metrics, Output


def ingest(
    raw_data: Input[Dataset],
    roles: str,
    beam_args: list,
    raw_data_version: str,
    dataflow: dict,
    dataset: Output[Dataset],
    ingest_metrics: Output[Metrics],
):
    """Runs calrec_core.data.run_ingest on the imported raw data with the experiment's
    ``roles`` (its roles mapping as JSON text, from the configure step).

    ``raw_data_version`` (the raw-data version step's output) only gets recorded, but it is
    part of the cache key, so new data is never served stale. ``dataflow`` (project, region,
    temp_location, worker_image, machine_type, max_workers, service_account) runs the job on
    Dataflow when its project is set; this step then waits for the job. A remote runner reads
    and writes Cloud Storage URIs directly.
    """
    import json

    from calrec_core.data import load_stats, roles_config_from_dict, run_ingest
    from calrec_core.data.ingest import dataflow_args
    from components.runtime import beam_runner_is_remote, json_metadata, log_numbers

    summary_keys = ("users", "items", "purchases", "examples", "dead_letter",
                    "metadata_dead_letter", "items_without_metadata", "filtered_users")
    roles = json.loads(roles)
    config = roles_config_from_dict(roles, source="the experiment's roles")
    beam_args = [*beam_args, *dataflow_args(**dataflow)]
    remote = beam_runner_is_remote(beam_args)
    input_dir = raw_data.uri if remote else raw_data.path
    output_dir = dataset.uri if remote else dataset.path
    run_ingest(input_dir, None, output_dir, beam_args=tuple(beam_args), config=config)
    stats = load_stats(dataset.path)
    # The headline counts per category (stats.json in the artifact holds everything).
    summary = {
        name: {key: counts.get(key) for key in summary_keys if key in counts}
        for name, counts in stats.get("categories", {}).items()
    }
    dataset.metadata["roles"] = json_metadata(roles)
    dataset.metadata["raw_data_uri"] = raw_data.uri
    dataset.metadata["raw_data_version"] = raw_data_version
    dataset.metadata["categories"] = json_metadata(summary)
    log_numbers(ingest_metrics, summary)

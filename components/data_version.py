"""Raw-data version step: names the snapshot of the raw files the run ingests."""


def raw_data_version(raw_data_uri: str, version: str) -> str:
    """``version`` when the run names one (e.g. a snapshot date), else a SHA-256 of the
    manifest of the files under ``raw_data_uri`` (components.raw_manifest). This step is never
    cached: it runs each time, and ingestion's cache is keyed on what it returns."""
    if version:
        return version
    from components.raw_manifest import data_version

    return data_version(raw_data_uri)

"""Training fixtures: the bundled sample ingested once per session (real Beam DirectRunner)."""

from __future__ import annotations

import pytest


@pytest.fixture(scope="session")
def ingested_sample(tmp_path_factory, sample_dir, sample_config):
    from calrec_core.data import run_ingest

    output = tmp_path_factory.mktemp("ingested") / "data"
    run_ingest(str(sample_dir), str(sample_config), str(output))
    return output

"""Google Cloud's naming rules that the steps and the client check before any request: resource
labels and VPC networks (Vertex AI and Compute Engine refuse anything else)."""

from __future__ import annotations

import re
from collections.abc import Mapping

# GCP resource labels: lowercase letters, digits, '_' and '-', at most 63 characters; keys
# start with a letter (https://cloud.google.com/compute/docs/labeling-resources).
LABEL_KEY = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
LABEL_VALUE = re.compile(r"^[a-z0-9_-]{0,63}$")
# A VPC network peered with Vertex AI.
NETWORK = re.compile(r"^projects/[0-9]+/global/networks/[a-z]([-a-z0-9]*[a-z0-9])?$")


def check_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """Returns ``labels`` if every key and value is a valid GCP label, else raises."""
    bad = [f"{key}={value}" for key, value in labels.items()
           if not LABEL_KEY.match(key) or not LABEL_VALUE.match(str(value))]
    if bad:
        raise ValueError(
            f"invalid labels {bad}: use lowercase letters, digits, '_' and '-' (keys start "
            "with a letter, at most 63 characters)"
        )
    return dict(labels)

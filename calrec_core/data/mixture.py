"""The Stage I data mixture of CALRec §3.3: category c is drawn with weight |U_c| ** 0.3.

One home for the rule: the exponent is configured as ``RolesConfig.mixture_exponent``
(data/config.py), ingestion computes the weights here and writes them to ``mixture.json``,
and Stage I draws its batches from them (``train.examples.MixtureSampler``).
"""

from __future__ import annotations

import math
from collections.abc import Mapping

PAPER_EXPONENT = 0.3  # §3.3: temperature-weighted sampling, |U| ** 0.3.


def mixture_weights(users: Mapping[str, int], exponent: float = PAPER_EXPONENT,
                    allow_empty: bool = False) -> dict:
    """Stage I sampling weights proportional to |U| ** exponent, normalised to sum to 1 (§3.3).

    The total is an exactly rounded sum (fsum), so the weights do not depend on the order in
    which a runner delivers the categories. With no users anywhere this raises, unless
    ``allow_empty`` (then every weight is 0 and the caller reports the empty categories).
    """
    raw = {name: (count**exponent if count > 0 else 0.0) for name, count in users.items()}
    total = math.fsum(raw[name] for name in sorted(raw))
    if total <= 0 and not allow_empty:
        raise ValueError("no category has users with training sequences; nothing to mix")
    return {
        "exponent": exponent,
        "weights": {name: raw[name] / total if total > 0 else 0.0 for name in sorted(raw)},
        "users": {name: int(users[name]) for name in sorted(users)},
    }

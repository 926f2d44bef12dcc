"""A picture of the ingested data: users by deduplicated sequence length, per category."""

from __future__ import annotations

from collections.abc import Mapping


def plot_sequence_lengths(stats: Mapping, path) -> None:
    """Writes a PNG with one log-scale bar chart per category (from stats.json)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    categories = list(stats["categories"].items())
    figure, axes = plt.subplots(len(categories), 1, figsize=(8, 2.4 * len(categories)),
                                squeeze=False)
    for axis, (name, counts) in zip(axes[:, 0], categories, strict=True):
        histogram = {int(length): users for length, users in counts["sequence_lengths"].items()}
        axis.bar(list(histogram), list(histogram.values()), width=0.9, color="tab:blue")
        axis.set_yscale("log")
        duplicates = counts["table1"]["duplicate_purchases_pct"]
        axis.set_title(f"{name} ({counts['role']}): {counts['users']} users, "
                       f"{counts['items']} items, {duplicates:.1f}% strict duplicates removed",
                       fontsize=9)
        axis.set_ylabel("users")
    axes[-1, 0].set_xlabel("purchases per user after dedup")
    figure.tight_layout()
    figure.savefig(path, dpi=120)
    plt.close(figure)

"""Synthetic Amazon-2018-layout data for scale tests and benchmarks (not for training).

Writes ``<Category>_5.json.gz`` reviews and ``meta_<Category>.json.gz`` metadata shaped like
the real files: Zipf-popular items, users with 5+ reviews, a share of strict duplicates,
repeated metadata rows, some Python-literal metadata lines and a few items without metadata.
Same arguments => same bytes.
"""

from __future__ import annotations

import dataclasses
import gzip
import json
import pathlib

import numpy as np

_WORDS = (
    "classic", "deluxe", "portable", "premium", "compact", "wireless", "organic", "vintage",
    "heavy", "duty", "ultra", "soft", "large", "small", "blue", "black", "steel", "wooden",
    "cotton", "leather", "smart", "digital", "family", "travel", "home", "office", "garden",
    "kitchen", "outdoor", "pro", "mini", "set", "pack", "kit", "bundle", "edition", "series",
)
_BRANDS = ("Acme", "Globex", "Initech", "Umbrella", "Stark", "Wayne", "Hooli", "Vandelay")


@dataclasses.dataclass(frozen=True)
class SyntheticSpec:
    """Size and shape of a synthetic category."""

    category: str = "Synthetic_Goods"  # File stem of the written files.
    num_reviews: int = 100_000  # Review lines written (duplicates included).
    num_items: int = 20_000  # Catalog size.
    mean_user_length: float = 9.0  # Mean reviews per user (5-core: at least 5).
    duplicate_rate: float = 0.05  # Share of reviews that repeat the previous one exactly.
    missing_meta_rate: float = 0.01  # Share of items without a metadata row.
    seed: int = 0  # Seeds everything.


def _user_lengths(spec: SyntheticSpec, rng: np.random.Generator) -> list[int]:
    lengths, total = [], 0
    while total < spec.num_reviews:
        length = 5 + int(rng.geometric(1.0 / max(spec.mean_user_length - 4.0, 1.0))) - 1
        length = min(length, spec.num_reviews - total)
        lengths.append(length)
        total += length
    return lengths


def _write_gz(path: pathlib.Path, lines) -> None:
    # mtime=0 and no stored name keep the bytes reproducible.
    with open(path, "wb") as raw, gzip.GzipFile(
        filename="", mode="wb", fileobj=raw, compresslevel=1, mtime=0
    ) as compressed:
        for line in lines:
            compressed.write(line.encode("utf-8") + b"\n")


def write_synthetic(output_dir, spec: SyntheticSpec = SyntheticSpec(), progress=None) -> dict:
    """Writes the two files; returns their paths and the review count."""
    output = pathlib.Path(output_dir)
    output.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(spec.seed)
    asins = [f"S{index:09d}" for index in range(spec.num_items)]
    popularity = 1.0 / np.arange(1, spec.num_items + 1) ** 0.8
    popularity /= popularity.sum()

    # One vectorised draw for all reviews; users take consecutive slices.
    all_items = rng.choice(spec.num_items, size=spec.num_reviews, p=popularity)

    def reviews():
        offset = 0
        for user_index, length in enumerate(_user_lengths(spec, rng)):
            user = f"SU{user_index:09d}"
            items = all_items[offset:offset + length]
            offset += length
            times = np.sort(rng.integers(1_300_000_000, 1_540_000_000, size=length))
            duplicates = rng.random(length) < spec.duplicate_rate
            previous = None
            for position in range(length):
                if duplicates[position] and previous is not None:
                    row = previous  # an exact repeat: same asin, text, rating, time
                else:
                    item = int(items[position])
                    row = {
                        "overall": float(rng.integers(1, 6)),
                        "verified": True,
                        "reviewerID": user,
                        "asin": asins[item],
                        "reviewText": f"review {user_index} {position} of item {item}",
                        "summary": "Synthetic",
                        "unixReviewTime": int(times[position]),
                    }
                previous = row
                if progress is not None:
                    progress(1)
                yield json.dumps(row)

    reviews_path = output / f"{spec.category}_5.json.gz"
    _write_gz(reviews_path, reviews())

    def metadata():
        for index, asin in enumerate(asins):
            if rng.random() < spec.missing_meta_rate:
                continue
            title = " ".join(rng.choice(_WORDS, size=int(rng.integers(3, 12))))
            row = {
                "asin": asin,
                "title": title.title(),
                "brand": _BRANDS[index % len(_BRANDS)],
                "category": ["Synthetic Goods", _WORDS[index % len(_WORDS)].title()],
                "main_cat": "Synthetic Goods",
                "price": f"${rng.integers(1, 500)}.{rng.integers(0, 100):02d}",
            }
            # Some published files use Python literals; some asins repeat.
            yield repr(row) if index % 50 == 0 else json.dumps(row)
            if index % 97 == 0:
                yield json.dumps({**row, "title": "A Later Repeated Row"})

    meta_path = output / f"meta_{spec.category}.json.gz"
    _write_gz(meta_path, metadata())
    return {"reviews": str(reviews_path), "metadata": str(meta_path),
            "num_reviews": spec.num_reviews}

"""The ingestion stages as Beam PTransforms (one per stage) and their small DoFns.

Every stage that can lose an event also emits counters as elements, ``((category, metric),
n)``, tagged ``counts``; WriteStats sums them so the accounting holds on any runner.
Files are written by keyed DoFns with sorted contents, so output bytes do not depend on
the runner, the worker count or bundle boundaries.
"""

from __future__ import annotations

import codecs
import io
import json
import zlib
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems

from calrec_core.data import records
from calrec_core.data.mixture import mixture_weights
from calrec_core.data.raw import BadLine, Review, parse_meta, parse_review, preview
from calrec_core.data.reader import CORPUS_COLUMNS, CORPUS_FILE, MIXTURE_FILE, STATS_FILE
from calrec_core.data.sequences import (
    chronological,
    split_by_role,
    strict_dedup,
    user_is_sampled,
)
from calrec_core.data.sources import CategorySource, open_lines
from calrec_core.data.stats import (
    BEFORE_FILTER,
    FILTER_REASONS,
    check_accounting,
    corpus_word_stats,
    table1_row,
)
from calrec_core.errors import InputError
from calrec_core.item_text import ItemAttributes, format_item

COUNTS = "counts"
DEAD_LETTER = "dead_letter"
ITEMS_BEFORE_FILTER = "items_before_filter"  # (category, asin) of every sampled user's events
DEAD_LETTER_KINDS = ("reviews", "metadata")
LENGTH_PREFIX = "length:"  # counter of users by deduplicated sequence length


def _file_name(path: str) -> str:
    return path.replace("\\", "/").rsplit("/", 1)[-1]


def _dead_letter(kind: str, category: str, path: str, line: int, reason: str, raw: bytes):
    return {
        "kind": kind, "category": category, "file": _file_name(path), "line": line,
        "reason": reason, "text": preview(raw),
    }


def input_error_message(path: str, number: int, error: BaseException) -> str:
    reason = " ".join(str(error).split()) or type(error).__name__
    return f"{path}: unreadable after line {number}: {reason}"


@beam.typehints.with_output_types(Any)
class ReadLinesFn(beam.DoFn):
    """(category, path) -> (category, path, line number, raw bytes) for every line.

    Counts the file's lines once (tagged ``counts``) rather than per line. A UTF-8 byte-order
    mark opening the file is not part of its first record, so it is stripped.
    """

    def __init__(self, metric: str):
        self._metric = metric  # counter name for lines read, e.g. "read"

    def process(self, source):
        category, path = source
        number = 0
        try:
            with open_lines(path) as stream:
                for number, raw in enumerate(stream, start=1):
                    if number == 1 and raw.startswith(codecs.BOM_UTF8):
                        raw = raw[len(codecs.BOM_UTF8):]
                    yield category, path, number, raw
        except (OSError, EOFError, zlib.error) as error:
            # A damaged compressed stream hides how many lines were lost: stop loudly. The
            # message is one line; run_ingest finds it again inside the runner's wrapping.
            raise InputError(input_error_message(path, number, error)) from error
        yield beam.pvalue.TaggedOutput(COUNTS, ((category, self._metric), number))


@beam.typehints.with_output_types(Any)
class ParseReviewFn(beam.DoFn):
    """Raw review line -> (category, Review), or a dead-letter record (counted)."""

    def process(self, element):
        category, path, number, raw = element
        try:
            yield category, parse_review(raw, number)
        except BadLine as error:
            yield beam.pvalue.TaggedOutput(COUNTS, ((category, "dead_letter"), 1))
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, _dead_letter("reviews", category, path, number, error.reason, raw)
            )


class ReadReviews(beam.PTransform):
    """Review files -> outputs ``reviews`` (category, Review), ``dead_letter``, ``counts``."""

    def __init__(self, sources: list[CategorySource]):
        super().__init__()
        self._files = [(source.name, source.reviews_path) for source in sources]

    def expand(self, pbegin):
        lines = (
            pbegin
            | "ListReviewFiles" >> beam.Create(self._files)
            | "ReadReviewLines" >> beam.ParDo(ReadLinesFn("read")).with_outputs(
                COUNTS, main="lines")
        )
        parsed = lines.lines | "ParseReviewLines" >> beam.ParDo(ParseReviewFn()).with_outputs(
            COUNTS, DEAD_LETTER, main="reviews"
        )
        counts = (lines[COUNTS], parsed[COUNTS]) | "FlattenReviewCounts" >> beam.Flatten()
        return {"reviews": parsed.reviews, DEAD_LETTER: parsed[DEAD_LETTER], COUNTS: counts}


@beam.typehints.with_output_types(Any)
class ParseMetaFn(beam.DoFn):
    """Raw metadata line -> ((category, asin), (line, attributes)), or a dead letter."""

    def process(self, element):
        category, path, number, raw = element
        try:
            asin, attributes = parse_meta(raw)
        except BadLine as error:
            yield beam.pvalue.TaggedOutput(COUNTS, ((category, "metadata_dead_letter"), 1))
            yield beam.pvalue.TaggedOutput(
                DEAD_LETTER, _dead_letter("metadata", category, path, number, error.reason, raw)
            )
            return
        yield (category, asin), (number, attributes.as_tuple())


class ReadMetadata(beam.PTransform):
    """Metadata files -> ``items`` ((category, asin), attribute tuple), first row per asin wins.

    Also outputs ``dead_letter`` and ``counts`` (rows, bad rows, repeated asins).
    """

    def __init__(self, sources: list[CategorySource]):
        super().__init__()
        self._files = [(s.name, s.meta_path) for s in sources if s.meta_path is not None]

    def expand(self, pbegin):
        lines = (
            pbegin
            | "ListMetadataFiles" >> beam.Create(self._files)
            | "ReadMetadataLines" >> beam.ParDo(ReadLinesFn("metadata_rows")).with_outputs(
                COUNTS, main="lines")
        )
        parsed = lines.lines | "ParseMetadataLines" >> beam.ParDo(ParseMetaFn()).with_outputs(
            COUNTS, DEAD_LETTER, main="rows"
        )
        # min over (line, attributes) keeps the earliest row of a repeated asin.
        first_rows = parsed.rows | "FirstRowPerAsin" >> beam.CombinePerKey(min)
        items = first_rows | "DropLineNumbers" >> beam.MapTuple(lambda key, row: (key, row[1]))
        unique_counts = items | "CountUniqueAsins" >> beam.MapTuple(
            lambda key, _: ((key[0], "metadata_unique_asins"), 1)
        )
        counts = (lines[COUNTS], parsed[COUNTS], unique_counts) | (
            "FlattenMetadataCounts" >> beam.Flatten())
        return {"items": items, DEAD_LETTER: parsed[DEAD_LETTER], COUNTS: counts}


@beam.typehints.with_output_types(Any)
class BuildSequenceFn(beam.DoFn):
    """One user's reviews -> sampled, chronological, strictly deduplicated, long enough.

    Emits (category, user_id, ((asin, timestamp), ...)), the counters of what it dropped, the
    users/purchases before the minimum-length filter and, tagged ``items_before_filter``, the
    (category, asin) of those purchases (Table 1 counted with and without the filter).
    """

    def __init__(self, rules: dict, seed: int):
        # rules: category -> (user_sample_rate, min_events)
        self._rules = rules
        self._seed = seed

    def process(self, element):
        (category, user_id), reviews = element
        rate, min_events = self._rules[category]
        reviews = list(reviews)
        if not user_is_sampled(self._seed, category, user_id, rate):
            yield beam.pvalue.TaggedOutput(
                COUNTS, ((category, "filtered:user_sampled_out"), len(reviews)))
            yield beam.pvalue.TaggedOutput(COUNTS, ((category, "users:user_sampled_out"), 1))
            return
        kept, duplicates = strict_dedup(chronological(reviews))
        if duplicates:
            yield beam.pvalue.TaggedOutput(COUNTS, ((category, "strict_duplicates"), duplicates))
        yield beam.pvalue.TaggedOutput(COUNTS, ((category, "before_filter:users"), 1))
        yield beam.pvalue.TaggedOutput(COUNTS, ((category, "before_filter:purchases"), len(kept)))
        for asin in sorted({event.asin for event in kept}):
            yield beam.pvalue.TaggedOutput(ITEMS_BEFORE_FILTER, (category, asin))
        if len(kept) < min_events:
            yield beam.pvalue.TaggedOutput(COUNTS, ((category, "filtered:too_short"), len(kept)))
            yield beam.pvalue.TaggedOutput(COUNTS, ((category, "users:too_short"), 1))
            return
        yield beam.pvalue.TaggedOutput(COUNTS, ((category, "kept"), len(kept)))
        yield beam.pvalue.TaggedOutput(COUNTS, ((category, "users"), 1))
        yield beam.pvalue.TaggedOutput(COUNTS, ((category, f"{LENGTH_PREFIX}{len(kept)}"), 1))
        yield category, user_id, tuple((event.asin, event.timestamp) for event in kept)


def _user_key(category: str, review: Review):
    return (category, review.user_id), review


class BuildUserSequences(beam.PTransform):
    """(category, Review) -> outputs ``sequences``, ``counts`` and ``items_before_filter``
    (see BuildSequenceFn)."""

    def __init__(self, sources: list[CategorySource], seed: int):
        super().__init__()
        self._rules = {s.name: (s.user_sample_rate, s.min_events) for s in sources}
        self._seed = seed

    def expand(self, reviews):
        return (
            reviews
            | "KeyByUser" >> beam.MapTuple(_user_key)
            | "GroupByUser" >> beam.GroupByKey()
            | "SortDedupFilter" >> beam.ParDo(BuildSequenceFn(self._rules, self._seed))
            .with_outputs(COUNTS, ITEMS_BEFORE_FILTER, main="sequences")
        )


class CountItemsBeforeFilter(beam.PTransform):
    """(category, asin) of sampled users' events -> ((category, "before_filter:items"), n)."""

    def expand(self, items):
        return (
            items
            | "DistinctItemsBeforeFilter" >> beam.Distinct()
            | "OnePerItemBeforeFilter" >> beam.MapTuple(
                lambda category, _: ((category, "before_filter:items"), 1))
        )


def _join_item(element):
    """Keeps items some kept event mentions (not the whole catalog); Unknown if no metadata."""
    (category, asin), grouped = element
    if not list(grouped["used"]):
        return []
    rows = list(grouped["meta"])
    attributes = ItemAttributes(*rows[0]) if rows else ItemAttributes()
    return [(category, asin, attributes.as_tuple(), bool(rows))]


class BuildCorpus(beam.PTransform):
    """Items of the kept sequences joined to their metadata ('Unknown' where it has none).

    Input: {"sequences": ..., "items": ((category, asin), attributes)}; output rows
    (category, asin, attribute tuple, has_metadata).
    """

    def expand(self, inputs):
        used = (
            inputs["sequences"]
            | "ItemsOfSequences" >> beam.FlatMapTuple(
                lambda category, _, events: {((category, asin), None) for asin, _ in events}
            )
        )
        return (
            {"used": used, "meta": inputs["items"]}
            | "JoinItemsWithMetadata" >> beam.CoGroupByKey()
            | "KeepUsedItems" >> beam.FlatMap(_join_item)
        )


@beam.typehints.with_output_types(Any)
class SplitSequenceFn(beam.DoFn):
    """A user's sequence -> one serialised Example per split of the category's role."""

    def __init__(self, roles: dict):
        self._roles = roles  # category -> role

    def process(self, element, texts):
        category, user_id, events = element
        for split, prefix in split_by_role(events, self._roles[category]).items():
            example = {
                "user_id": user_id,
                "category": category,
                "asins": [asin for asin, _ in prefix],
                "texts": [texts[(category, asin)] for asin, _ in prefix],
                "timestamps": [timestamp for _, timestamp in prefix],
            }
            yield (category, split), (user_id, records.encode_tf_example(example))


class SplitByRole(beam.PTransform):
    """Sequences + corpus -> ((category, split), (user_id, Example bytes))."""

    def __init__(self, sources: list[CategorySource]):
        super().__init__()
        self._roles = {source.name: source.role for source in sources}

    def expand(self, inputs):
        texts = inputs["corpus"] | "ItemTexts" >> beam.MapTuple(
            lambda category, asin, attributes, _: (
                (category, asin), format_item(ItemAttributes(*attributes)))
        )
        return inputs["sequences"] | "MakeExamples" >> beam.ParDo(
            SplitSequenceFn(self._roles), texts=beam.pvalue.AsDict(texts)
        )


def _write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as stream:
        stream.write(data)


@beam.typehints.with_output_types(Any)
class WriteShardFn(beam.DoFn):
    """Writes one shard: its examples sorted by user id, framed as TFRecords."""

    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, element):
        (category, split, index, num_shards), values = element
        examples = sorted(value for value in values if value is not None)
        buffer = io.BytesIO()
        records.write_records(buffer, (data for _, data in examples))
        name = records.shard_name(split, index, num_shards)
        _write_bytes(FileSystems.join(self._output_dir, category, name), buffer.getvalue())
        yield (category, f"{split}_examples"), len(examples)


def _assign_shard(element, num_records, records_per_shard):
    (category, split), (user_id, data) = element
    num_shards = records.num_shards_for(num_records[(category, split)], records_per_shard)
    index = records.shard_of(user_id, num_shards)
    return (category, split, index, num_shards), (user_id, data)


def _all_shards(element, records_per_shard):
    (category, split), count = element
    num_shards = records.num_shards_for(count, records_per_shard)
    return [((category, split, index, num_shards), None) for index in range(num_shards)]


class WriteTFRecords(beam.PTransform):
    """Examples -> <out>/<category>/<split>-SSSSS-of-NNNNN.tfrecord; outputs counters.

    The shard count follows the split's size; a user's shard is a stable hash of its id,
    and every shard file is written, empty or not, so the set is always complete.
    """

    def __init__(self, output_dir: str, sources: list[CategorySource], records_per_shard: int):
        super().__init__()
        self._output_dir = output_dir
        self._expected = [((s.name, split), 0) for s in sources for split in s.splits]
        self._records_per_shard = records_per_shard

    def expand(self, examples):
        ones = examples | "OnePerExample" >> beam.MapTuple(lambda key, _: (key, 1))
        zeros = examples.pipeline | "ExpectedSplits" >> beam.Create(self._expected)
        sizes = (ones, zeros) | "FlattenSplitSizes" >> beam.Flatten() | (
            "CountPerSplit" >> beam.CombinePerKey(sum))
        keyed = examples | "AssignShards" >> beam.Map(
            _assign_shard, num_records=beam.pvalue.AsDict(sizes),
            records_per_shard=self._records_per_shard,
        )
        markers = sizes | "EveryShard" >> beam.FlatMap(
            _all_shards, records_per_shard=self._records_per_shard)
        return (
            (keyed, markers)
            | "FlattenShardInputs" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(WriteShardFn(self._output_dir))
        )


@beam.typehints.with_output_types(Any)
class WriteCorpusFn(beam.DoFn):
    """One category's items -> corpus.parquet sorted by asin; emits Table 1 word counters."""

    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, element):
        import pyarrow as pa
        import pyarrow.parquet as pq

        category, rows = element
        rows = sorted(row for row in rows if row is not None)
        items = [ItemAttributes(*attributes) for _, attributes, _ in rows]
        columns = {
            "asin": [asin for asin, _, _ in rows],
            "title": [item.title for item in items],
            "category": [item.category for item in items],
            "brand": [item.brand for item in items],
            "price": [item.price for item in items],
            "text": [format_item(item) for item in items],
        }
        assert tuple(columns) == CORPUS_COLUMNS
        table = pa.table({name: pa.array(values, pa.string()) for name, values in columns.items()})
        buffer = io.BytesIO()
        pq.write_table(table, buffer)
        _write_bytes(FileSystems.join(self._output_dir, category, CORPUS_FILE), buffer.getvalue())
        yield (category, "items_without_metadata"), sum(1 for *_, has_meta in rows if not has_meta)
        for name, value in corpus_word_stats(items).items():
            yield (category, name), value


class WriteCorpus(beam.PTransform):
    """Corpus rows -> <out>/<category>/corpus.parquet (also for a category with no items)."""

    def __init__(self, output_dir: str, sources: list[CategorySource]):
        super().__init__()
        self._output_dir = output_dir
        self._categories = [source.name for source in sources]

    def expand(self, corpus):
        rows = corpus | "KeyItemsByCategory" >> beam.MapTuple(
            lambda category, asin, attributes, has_meta: (category, (asin, attributes, has_meta))
        )
        markers = corpus.pipeline | "EveryCategory" >> beam.Create(
            [(name, None) for name in self._categories])
        return (
            (rows, markers)
            | "FlattenCorpusInputs" >> beam.Flatten()
            | "GroupByCategory" >> beam.GroupByKey()
            | "WriteCorpusFiles" >> beam.ParDo(WriteCorpusFn(self._output_dir))
        )


class WriteDeadLetterFn(beam.DoFn):
    def __init__(self, output_dir: str):
        self._output_dir = output_dir

    def process(self, element):
        kind, letters = element
        letters = sorted(
            (letter for letter in letters if letter is not None),
            key=lambda letter: (letter["category"], letter["file"], letter["line"]),
        )
        text = "".join(json.dumps(letter, sort_keys=True) + "\n" for letter in letters)
        path = FileSystems.join(self._output_dir, DEAD_LETTER, f"{kind}.jsonl")
        _write_bytes(path, text.encode("utf-8"))


class WriteDeadLetters(beam.PTransform):
    """Bad lines -> <out>/dead_letter/{reviews,metadata}.jsonl with file, line and reason."""

    def __init__(self, output_dir: str):
        super().__init__()
        self._output_dir = output_dir

    def expand(self, letters):
        keyed = letters | "KeyByKind" >> beam.Map(lambda letter: (letter["kind"], letter))
        markers = letters.pipeline | "EveryKind" >> beam.Create(
            [(kind, None) for kind in DEAD_LETTER_KINDS])
        return (
            (keyed, markers)
            | "FlattenDeadLetters" >> beam.Flatten()
            | "GroupByKind" >> beam.GroupByKey()
            | "WriteDeadLetterFiles" >> beam.ParDo(WriteDeadLetterFn(self._output_dir))
        )


class ComputeMixture(beam.PTransform):
    """Sequences -> one dict: Stage I weights ∝ |U|^exponent over users with train sequences."""

    def __init__(self, sources: list[CategorySource], exponent: float):
        super().__init__()
        self._zeros = [(source.name, 0) for source in sources]
        self._exponent = exponent

    def expand(self, sequences):
        ones = sequences | "OnePerUser" >> beam.MapTuple(lambda category, *_: (category, 1))
        zeros = sequences.pipeline | "EveryMixtureCategory" >> beam.Create(self._zeros)
        return (
            (ones, zeros)
            | "FlattenUserCounts" >> beam.Flatten()
            | "UsersPerCategory" >> beam.CombinePerKey(sum)
            | "CollectUserCounts" >> beam.combiners.ToDict()
            # A category without users is reported by run_ingest, not raised mid-pipeline.
            | "MixtureWeights" >> beam.Map(mixture_weights, exponent=self._exponent,
                                           allow_empty=True)
        )


def _length_histogram(counters: dict, category: str) -> dict[str, int]:
    """{length: users} for the kept users, in increasing length (JSON keys are strings)."""
    lengths = sorted(
        (int(metric[len(LENGTH_PREFIX):]), int(count))
        for (name, metric), count in counters.items()
        if name == category and metric.startswith(LENGTH_PREFIX)
    )
    return {str(length): count for length, count in lengths}


def assemble_stats(counters: dict, sources: list[CategorySource], mixture: dict) -> dict:
    """Summed counters -> the stats.json document (raises if the accounting is off)."""
    categories = {}
    for source in sources:
        name = source.name

        def get(metric, name=name):
            return int(counters.get((name, metric), 0))

        counts = {
            "role": source.role,
            "user_sample_rate": source.user_sample_rate,
            "has_metadata_file": source.meta_path is not None,
            "read": get("read"),
            "kept": get("kept"),
            "strict_duplicates": get("strict_duplicates"),
            "dead_letter": get("dead_letter"),
            "filtered": {reason: get(f"filtered:{reason}") for reason in FILTER_REASONS},
            "filtered_users": {reason: get(f"users:{reason}") for reason in FILTER_REASONS},
            "before_filter": {name: get(f"before_filter:{name}") for name in BEFORE_FILTER},
            "users": get("users"),
            "items": get("items"),
            "purchases": get("kept"),
            "items_without_metadata": get("items_without_metadata"),
            "metadata_rows": get("metadata_rows"),
            "metadata_dead_letter": get("metadata_dead_letter"),
            "metadata_repeated_rows": max(
                0, get("metadata_rows") - get("metadata_dead_letter")
                - get("metadata_unique_asins")),
            "examples": {split: get(f"{split}_examples") for split in source.splits},
            "word_tokens": get("word_tokens"),
            "word_vocab_size": get("word_vocab_size"),
            "mixture": {"weight": mixture["weights"][name], "users": mixture["users"][name]},
            "sequence_lengths": _length_histogram(counters, name),
        }
        check_accounting(name, counts)
        counts["table1"] = table1_row(counts)
        categories[name] = counts
    return {"categories": categories, "mixture": mixture}


class WriteStatsFn(beam.DoFn):
    def __init__(self, output_dir: str, sources: list[CategorySource]):
        self._output_dir = output_dir
        self._sources = sources

    def process(self, counters, mixture):
        stats = assemble_stats(dict(counters), self._sources, mixture)
        for name, document in ((STATS_FILE, stats), (MIXTURE_FILE, mixture)):
            text = json.dumps(document, indent=2, sort_keys=True) + "\n"
            _write_bytes(FileSystems.join(self._output_dir, name), text.encode("utf-8"))
        yield stats


class WriteStats(beam.PTransform):
    """Counters + mixture -> <out>/stats.json and <out>/mixture.json; outputs the stats."""

    def __init__(self, output_dir: str, sources: list[CategorySource]):
        super().__init__()
        self._output_dir = output_dir
        self._sources = sources

    def expand(self, inputs):
        return (
            inputs["counts"]
            | "SumCounters" >> beam.CombinePerKey(sum)
            | "CollectCounters" >> beam.combiners.ToList()
            | "WriteStatsFiles" >> beam.ParDo(
                WriteStatsFn(self._output_dir, self._sources),
                mixture=beam.pvalue.AsSingleton(inputs["mixture"]),
            )
        )

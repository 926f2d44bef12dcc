"""The ingestion stages as Beam PTransforms (one per stage) and their small DoFns.

Every stage that can lose an event also emits counters as elements, ``((category, metric),
n)``, tagged ``counts``; WriteStats sums them so the accounting holds on any runner.
Files are written by keyed DoFns with sorted contents, so output bytes do not depend on
the runner, the worker count or bundle boundaries.

Speed: what costs is Beam moving elements between stages, so nothing per review is an
element. Files are read in chunks of lines (on Dataflow reshuffled, so every worker parses),
parsed reviews travel in batches by user bucket, examples are made where their shard is
written, and counters are summed per bucket.
"""

from __future__ import annotations

import codecs
import collections
import io
import json
import operator
import zlib
from typing import Any

import apache_beam as beam
from apache_beam.io.filesystems import FileSystems
from apache_beam.transforms.window import GlobalWindow
from apache_beam.utils.timestamp import MIN_TIMESTAMP
from apache_beam.utils.windowed_value import WindowedValue

from calrec_core.data import records
from calrec_core.data.mixture import mixture_weights
from calrec_core.data.raw import BadLine, Review, parse_meta, parse_review, preview
from calrec_core.data.reader import CORPUS_COLUMNS, CORPUS_FILE, MIXTURE_FILE, STATS_FILE
from calrec_core.data.sequences import (
    chronological,
    split_lengths,
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
# (category, asins) of sampled users' events, once per user bucket.
ITEMS_BEFORE_FILTER = "items_before_filter"
DEAD_LETTER_KINDS = ("reviews", "metadata")
LENGTH_PREFIX = "length:"  # counter of users by deduplicated sequence length
# Decompressed bytes of whole lines per element between a file's reader and its parsers.
CHUNK_BYTES = 4 << 20
# Shuffle keys per category for grouping reviews by user (parallelism of that stage).
NUM_USER_BUCKETS = 256
# Parsed reviews a parser holds before handing its batches on (bounds its memory).
FLUSH_REVIEWS = 200_000


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
class ReadChunksFn(beam.DoFn):
    """(category, path, part, parts) -> (category, path, first line number, chunk) for every
    ``parts``-th chunk of the file, starting at chunk ``part``.

    A chunk is about ``CHUNK_BYTES`` of whole lines, so the parser gets a few large elements
    rather than one per line (see ReadReviews on sharing a file between workers). Part 0
    counts the file's lines (tagged ``counts``). A UTF-8 byte-order mark opening the file is
    not part of its first record, so it is stripped.
    """

    def __init__(self, metric: str, chunk_bytes: int = CHUNK_BYTES):
        self._metric = metric  # counter name for lines read, e.g. "read"
        self._chunk_bytes = chunk_bytes  # decompressed bytes read at a time

    def process(self, source):
        category, path, part, parts = source
        lines = index = 0
        try:
            with open_lines(path) as stream:
                pending = b""
                while block := stream.read(self._chunk_bytes):
                    if lines == 0 and not pending and block.startswith(codecs.BOM_UTF8):
                        block = block[len(codecs.BOM_UTF8):]
                    block = pending + block
                    cut = block.rfind(b"\n") + 1  # 0: no line has ended in it yet
                    chunk, pending = block[:cut], block[cut:]
                    if chunk:
                        if index % parts == part:
                            yield category, path, lines + 1, chunk
                        index += 1
                        lines += chunk.count(b"\n")
                if pending:
                    if index % parts == part:
                        yield category, path, lines + 1, pending
                    lines += 1
        except (OSError, EOFError, zlib.error) as error:
            # A damaged compressed stream hides how many lines were lost: stop loudly, naming
            # the last whole line. The message is one line; run_ingest finds it again inside
            # the runner's wrapping.
            raise InputError(input_error_message(path, _readable_lines(path), error)) from error
        if part == 0:
            yield beam.pvalue.TaggedOutput(COUNTS, ((category, self._metric), lines))


def _readable_lines(path: str) -> int:
    """How many lines of a damaged file read back before the damage (the error path only)."""
    number = 0
    try:
        with open_lines(path) as stream:
            for _ in stream:
                number += 1
    except (OSError, EOFError, zlib.error):
        pass
    return number


def split_lines(chunk: bytes) -> list[bytes]:
    """A chunk's lines without their newlines, split where a file iterator splits (b"\\n")."""
    lines = chunk.split(b"\n")
    if lines[-1] == b"":
        lines.pop()  # the last line ended with its newline
    return lines


def _read_chunks(pbegin, label: str, files, metric: str, chunk_bytes: int, spread: bool,
                 parts: int):
    """Files -> chunks and the counts of lines read; see ReadReviews for ``spread`` and
    ``parts``."""
    sources = pbegin | f"List{label}Files" >> beam.Create(
        [(category, path, part, parts) for category, path in files for part in range(parts)])
    if parts > 1:
        sources = sources | f"Spread{label}Parts" >> beam.Reshuffle()
    chunks = sources | f"Read{label}Chunks" >> beam.ParDo(
        ReadChunksFn(metric, chunk_bytes)).with_outputs(COUNTS, main="chunks")
    if not spread:
        return chunks.chunks, chunks[COUNTS]
    return chunks.chunks | f"Spread{label}Chunks" >> beam.Reshuffle(), chunks[COUNTS]


def user_bucket(user_id: str) -> int:
    """Stable (runner- and process-independent) bucket of a user's reviews."""
    return zlib.crc32(user_id.encode("utf-8")) % NUM_USER_BUCKETS


def batch_reviews(reviews) -> list:
    """(category, Review) pairs -> [((category, bucket), (Review fields, ...))], each user's
    reviews in its one bucket: the form ReadReviews outputs and BuildUserSequences takes."""
    batches: dict = collections.defaultdict(list)
    for category, review in reviews:
        batches[(category, user_bucket(review.user_id))].append(tuple(review))
    return [(key, tuple(batch)) for key, batch in sorted(batches.items())]


@beam.typehints.with_output_types(Any)
class ParseReviewsFn(beam.DoFn):
    """Chunks of review lines -> ((category, user bucket), (Review fields, ...)) batches, and
    a dead-letter record (counted) for each bad line.

    A bundle's reviews are held by user bucket and handed on at the bundle's end (or whenever
    ``FLUSH_REVIEWS`` are held), so the shuffle by user moves a few thousand batches rather
    than one element per review.
    """

    def __init__(self, flush_reviews: int = FLUSH_REVIEWS):
        self._flush_reviews = flush_reviews  # reviews held before the batches are handed on

    def start_bundle(self):
        self._batches: dict = collections.defaultdict(list)
        self._held = 0

    def process(self, element):
        category, path, first, chunk = element
        lines = split_lines(chunk)
        bad = 0
        for number, raw in enumerate(lines, start=first):
            try:
                review = parse_review(raw, number)
            except BadLine as error:
                bad += 1
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, _dead_letter(
                    "reviews", category, path, number, error.reason, raw))
                continue
            # A plain tuple: Beam's coder pickles a NamedTuple, one pickle per review.
            self._batches[(category, user_bucket(review.user_id))].append(tuple(review))
        self._held += len(lines) - bad
        if bad:
            yield beam.pvalue.TaggedOutput(COUNTS, ((category, "dead_letter"), bad))
        if self._held >= self._flush_reviews:
            yield from self._take_batches()

    def finish_bundle(self):
        for batch in self._take_batches():
            yield WindowedValue(batch, MIN_TIMESTAMP, [GlobalWindow()])

    def _take_batches(self) -> list:
        batches, self._batches, self._held = self._batches, collections.defaultdict(list), 0
        return [(key, tuple(batch)) for key, batch in sorted(batches.items())]


class ReadReviews(beam.PTransform):
    """Review files -> outputs ``reviews`` (batches, see ParseReviewsFn), ``dead_letter`` and
    ``counts``.

    Two ways to share one file between workers: ``spread_chunks`` reshuffles its chunks, so
    every worker parses some; worth it where a shuffle is cheap next to parsing (Dataflow).
    On the DirectRunner every element between stages goes through the runner's one process
    (over gRPC to its worker processes), so there ``file_parts`` (the workers) readers each
    decompress the whole file but parse only every ``file_parts``-th chunk, and only compact
    reviews cross the runner.
    """

    def __init__(self, sources: list[CategorySource], chunk_bytes: int = CHUNK_BYTES,
                 flush_reviews: int = FLUSH_REVIEWS, spread_chunks: bool = False,
                 file_parts: int = 1):
        super().__init__()
        self._files = [(source.name, source.reviews_path) for source in sources]
        self._chunk_bytes = chunk_bytes
        self._flush_reviews = flush_reviews
        self._spread = spread_chunks
        self._parts = file_parts

    def expand(self, pbegin):
        chunks, read_counts = _read_chunks(pbegin, "Review", self._files, "read",
                                           self._chunk_bytes, self._spread, self._parts)
        parsed = chunks | "ParseReviewChunks" >> beam.ParDo(
            ParseReviewsFn(self._flush_reviews)).with_outputs(
            COUNTS, DEAD_LETTER, main="reviews"
        )
        counts = (read_counts, parsed[COUNTS]) | "FlattenReviewCounts" >> beam.Flatten()
        return {"reviews": parsed.reviews, DEAD_LETTER: parsed[DEAD_LETTER], COUNTS: counts}


@beam.typehints.with_output_types(Any)
class ParseMetadataFn(beam.DoFn):
    """Chunks of metadata lines -> ((category, asin), (line, attributes)) per row, and a
    dead-letter record (counted) for each bad row."""

    def process(self, element):
        category, path, first, chunk = element
        bad = 0
        for number, raw in enumerate(split_lines(chunk), start=first):
            try:
                asin, attributes = parse_meta(raw)
            except BadLine as error:
                bad += 1
                yield beam.pvalue.TaggedOutput(DEAD_LETTER, _dead_letter(
                    "metadata", category, path, number, error.reason, raw))
                continue
            yield (category, asin), (number, attributes.as_tuple())
        if bad:
            yield beam.pvalue.TaggedOutput(COUNTS, ((category, "metadata_dead_letter"), bad))


class ReadMetadata(beam.PTransform):
    """Metadata files -> ``items`` ((category, asin), attribute tuple), first row per asin wins.

    Also outputs ``dead_letter`` and ``counts`` (rows, bad rows, repeated asins).
    """

    def __init__(self, sources: list[CategorySource], chunk_bytes: int = CHUNK_BYTES,
                 spread_chunks: bool = False, file_parts: int = 1):
        super().__init__()
        self._files = [(s.name, s.meta_path) for s in sources if s.meta_path is not None]
        self._chunk_bytes = chunk_bytes
        self._spread = spread_chunks  # as ReadReviews
        self._parts = file_parts  # as ReadReviews

    def expand(self, pbegin):
        chunks, read_counts = _read_chunks(pbegin, "Metadata", self._files, "metadata_rows",
                                           self._chunk_bytes, self._spread, self._parts)
        parsed = chunks | "ParseMetadataChunks" >> beam.ParDo(ParseMetadataFn()).with_outputs(
            COUNTS, DEAD_LETTER, main="rows"
        )
        # min over (line, attributes) keeps the earliest row of a repeated asin.
        first_rows = parsed.rows | "FirstRowPerAsin" >> beam.CombinePerKey(min)
        items = first_rows | "DropLineNumbers" >> beam.MapTuple(lambda key, row: (key, row[1]))
        unique_counts = items | "CountUniqueAsins" >> beam.MapTuple(
            lambda key, _: ((key[0], "metadata_unique_asins"), 1)
        )
        counts = (read_counts, parsed[COUNTS], unique_counts) | (
            "FlattenMetadataCounts" >> beam.Flatten())
        return {"items": items, DEAD_LETTER: parsed[DEAD_LETTER], COUNTS: counts}


_USER, _ASIN = map(Review._fields.index, ("user_id", "asin"))
_ASIN_AND_TIME = operator.itemgetter(*map(Review._fields.index, ("asin", "timestamp")))


@beam.typehints.with_output_types(Any)
class BuildSequencesFn(beam.DoFn):
    """One bucket's reviews -> each user's sampled, chronological, strictly deduplicated
    sequence, if long enough.

    Emits the bucket's kept users as one batch, ((category, bucket), ((user_id, ((asin,
    timestamp), ...)), ...)) sorted by user, and once per bucket the counters of what it
    dropped and of the users/purchases before the minimum-length filter, and (tagged
    ``items_before_filter``) (category, asins of those purchases): Table 1 counted with and
    without the filter.
    """

    def __init__(self, rules: dict, seed: int):
        # rules: category -> (user_sample_rate, min_events)
        self._rules = rules
        self._seed = seed

    def process(self, element):
        (category, bucket), batches = element
        rate, min_events = self._rules[category]
        by_user: dict = collections.defaultdict(list)
        for batch in batches:
            for review in batch:  # a Review's fields, as a plain tuple
                by_user[review[_USER]].append(review)
        counts: collections.Counter = collections.Counter()
        items: set = set()
        sequences = []
        for user_id in sorted(by_user):
            reviews = by_user[user_id]
            if not user_is_sampled(self._seed, category, user_id, rate):
                counts["filtered:user_sampled_out"] += len(reviews)
                counts["users:user_sampled_out"] += 1
                continue
            kept, duplicates = strict_dedup(chronological(reviews))
            counts["strict_duplicates"] += duplicates
            counts["before_filter:users"] += 1
            counts["before_filter:purchases"] += len(kept)
            items.update(event[_ASIN] for event in kept)
            if len(kept) < min_events:
                counts["filtered:too_short"] += len(kept)
                counts["users:too_short"] += 1
                continue
            counts["kept"] += len(kept)
            counts["users"] += 1
            counts[f"{LENGTH_PREFIX}{len(kept)}"] += 1
            sequences.append((user_id, tuple(map(_ASIN_AND_TIME, kept))))
        if sequences:
            yield (category, bucket), tuple(sequences)
        for metric, value in sorted(counts.items()):
            if value:
                yield beam.pvalue.TaggedOutput(COUNTS, ((category, metric), value))
        if items:
            yield beam.pvalue.TaggedOutput(ITEMS_BEFORE_FILTER, (category, tuple(sorted(items))))


def batch_sequences(sequences) -> list:
    """(category, user_id, events) rows -> [((category, bucket), ((user_id, events), ...))]: the
    form of BuildUserSequences' ``sequences``, which the later stages take."""
    batches: dict = collections.defaultdict(list)
    for category, user_id, events in sequences:
        batches[(category, user_bucket(user_id))].append((user_id, tuple(events)))
    return [(key, tuple(sorted(batch))) for key, batch in sorted(batches.items())]


def sequence_rows(batch) -> list:
    """A batch of sequences (batch_sequences) -> its (category, user_id, events) rows."""
    (category, _), sequences = batch
    return [(category, user_id, events) for user_id, events in sequences]


class BuildUserSequences(beam.PTransform):
    """Review batches (``batch_reviews``) -> outputs ``sequences`` (batches, see
    ``batch_sequences``), ``counts`` and ``items_before_filter`` (see BuildSequencesFn)."""

    def __init__(self, sources: list[CategorySource], seed: int):
        super().__init__()
        self._rules = {s.name: (s.user_sample_rate, s.min_events) for s in sources}
        self._seed = seed

    def expand(self, batches):
        return (
            batches
            | "GroupByUserBucket" >> beam.GroupByKey()
            | "SortDedupFilter" >> beam.ParDo(BuildSequencesFn(self._rules, self._seed))
            .with_outputs(COUNTS, ITEMS_BEFORE_FILTER, main="sequences")
        )


class UnionFn(beam.CombineFn):
    """The union of iterables, as a sorted tuple (combined where each batch is made, so a
    category's items cross the shuffle once per bundle, not once per event)."""

    def create_accumulator(self):
        return set()

    def add_input(self, accumulator, values):
        accumulator.update(values)
        return accumulator

    def merge_accumulators(self, accumulators):
        merged = set()
        for accumulator in accumulators:
            merged |= accumulator
        return merged

    def extract_output(self, accumulator):
        return tuple(sorted(accumulator))


class CountItemsBeforeFilter(beam.PTransform):
    """(category, asins) of sampled users' events -> ((category, "before_filter:items"), n)."""

    def expand(self, items):
        return (
            items
            | "DistinctItemsBeforeFilter" >> beam.CombinePerKey(UnionFn())
            | "CountDistinctItems" >> beam.MapTuple(
                lambda category, asins: ((category, "before_filter:items"), len(asins)))
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
            | "ItemsOfSequences" >> beam.MapTuple(
                lambda key, sequences: (key[0], [asin for _, events in sequences
                                                 for asin, _ in events]))
            | "DistinctItemsOfSequences" >> beam.CombinePerKey(UnionFn())
            | "OnePerUsedItem" >> beam.FlatMapTuple(
                lambda category, asins: [((category, asin), None) for asin in asins])
        )
        return (
            {"used": used, "meta": inputs["items"]}
            | "JoinItemsWithMetadata" >> beam.CoGroupByKey()
            | "KeepUsedItems" >> beam.FlatMap(_join_item)
        )


def user_examples(category: str, user_id: str, events, role: str, texts) -> dict[str, bytes]:
    """A user's sequence -> {split: serialised Example} for each split of the category's role
    (``texts``: (category, asin) -> item text); each split's example is a prefix."""
    lengths = split_lengths(len(events), role)
    encoded = records.encode_prefix_examples({
        "user_id": user_id,
        "category": category,
        "asins": [asin for asin, _ in events],
        "texts": [texts[(category, asin)] for asin, _ in events],
        "timestamps": [timestamp for _, timestamp in events],
    }, lengths.values())
    return {split: encoded[length] for split, length in lengths.items()}


def _write_bytes(path: str, data: bytes) -> None:
    with FileSystems.create(path) as stream:
        stream.write(data)


@beam.typehints.with_output_types(Any)
class WriteShardFn(beam.DoFn):
    """Writes one shard of a category for every split of its role: the examples of the
    shard's users, sorted by user id, framed as TFRecords. Emits the examples counted."""

    def __init__(self, output_dir: str, roles: dict, splits: dict):
        self._output_dir = output_dir
        self._roles = roles  # category -> role
        self._splits = splits  # category -> the splits its role writes

    def process(self, element, texts):
        (category, index, num_shards), batches = element
        role = self._roles[category]
        sequences = sorted(row for batch in batches if batch is not None for row in batch)
        examples = [user_examples(category, user_id, events, role, texts)
                    for user_id, events in sequences]
        for split in self._splits[category]:
            buffer = io.BytesIO()
            records.write_records(buffer, (example[split] for example in examples))
            name = records.shard_name(split, index, num_shards)
            _write_bytes(FileSystems.join(self._output_dir, category, name), buffer.getvalue())
            yield (category, f"{split}_examples"), len(examples)


def _assign_shards(element, num_users, records_per_shard):
    """A batch of a category's sequences -> one batch per shard its users fall in."""
    (category, _), sequences = element
    num_shards = records.num_shards_for(num_users[category], records_per_shard)
    shards = collections.defaultdict(list)
    for user_id, events in sequences:
        shards[records.shard_of(user_id, num_shards)].append((user_id, events))
    return [((category, index, num_shards), tuple(batch))
            for index, batch in sorted(shards.items())]


def _all_shards(element, records_per_shard):
    category, count = element
    num_shards = records.num_shards_for(count, records_per_shard)
    return [((category, index, num_shards), None) for index in range(num_shards)]


class WriteTFRecords(beam.PTransform):
    """Sequence batches + corpus -> <out>/<category>/<split>-SSSSS-of-NNNNN.tfrecord, one
    Example per user and split of the category's role (``user_examples``); outputs counters.

    Every split of a role holds one example per kept user, so the shard count follows the
    category's users; a user's shard is a stable hash of its id, and every shard file is
    written, empty or not, so the set is always complete. Examples are made where their shard
    is written: only the short sequences cross the shuffle, never the examples' item texts.
    """

    def __init__(self, output_dir: str, sources: list[CategorySource], records_per_shard: int):
        super().__init__()
        self._output_dir = output_dir
        self._roles = {source.name: source.role for source in sources}
        self._splits = {source.name: source.splits for source in sources}
        self._records_per_shard = records_per_shard

    def expand(self, inputs):
        sequences = inputs["sequences"]
        texts = inputs["corpus"] | "ItemTexts" >> beam.MapTuple(
            lambda category, asin, attributes, _: (
                (category, asin), format_item(ItemAttributes(*attributes)))
        )
        users = sequences | "UsersPerBatch" >> beam.MapTuple(
            lambda key, batch: (key[0], len(batch)))
        zeros = sequences.pipeline | "ExpectedCategories" >> beam.Create(
            [(category, 0) for category in self._roles])
        sizes = (users, zeros) | "FlattenUserCounts" >> beam.Flatten() | (
            "UsersPerCategory" >> beam.CombinePerKey(sum))
        keyed = sequences | "AssignShards" >> beam.FlatMap(
            _assign_shards, num_users=beam.pvalue.AsDict(sizes),
            records_per_shard=self._records_per_shard,
        )
        markers = sizes | "EveryShard" >> beam.FlatMap(
            _all_shards, records_per_shard=self._records_per_shard)
        return (
            (keyed, markers)
            | "FlattenShardInputs" >> beam.Flatten()
            | "GroupByShard" >> beam.GroupByKey()
            | "WriteShards" >> beam.ParDo(
                WriteShardFn(self._output_dir, self._roles, self._splits),
                texts=beam.pvalue.AsDict(texts))
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
    """Sequence batches -> one dict: Stage I weights ∝ |U|^exponent over users with train
    sequences."""

    def __init__(self, sources: list[CategorySource], exponent: float):
        super().__init__()
        self._zeros = [(source.name, 0) for source in sources]
        self._exponent = exponent

    def expand(self, sequences):
        ones = sequences | "UsersPerBatch" >> beam.MapTuple(
            lambda key, batch: (key[0], len(batch)))
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

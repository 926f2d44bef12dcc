"""Each ingestion stage on the real DirectRunner, on small hand-written inputs."""

from __future__ import annotations

import gzip
import hashlib
import json

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from calrec_core.data import read_examples, records
from calrec_core.data import transforms as t
from calrec_core.data.raw import Review
from calrec_core.data.sources import CategorySource
from calrec_core.item_text import ItemAttributes, format_item


def _source(name, role="eval", rate=1.0, reviews="r.json", meta=None):
    minimum = {"pretrain": 2, "validation": 2, "eval": 3}[role]
    splits = {"pretrain": ("train",), "validation": ("train", "valid"),
              "eval": ("train", "valid", "test")}[role]
    return CategorySource(name, role, rate, minimum, splits, str(reviews), meta and str(meta))


def _event(user, asin, time, line, text="ok", rating=5.0):
    digest = hashlib.blake2b(text.encode(), digest_size=16).digest()
    return Review(user, asin, time, rating, digest, line)


def _summed(counts):
    return counts | beam.CombinePerKey(sum)


def test_read_reviews_parses_plain_and_gzip_and_dead_letters_bad_lines(raw_dir, raw):
    gz = raw.write_lines(raw_dir / "A_5.json.gz", [
        raw.review("U1", "B1", 10), b"\xff not utf-8", raw.review("U2", "B2", 20)])
    plain = raw.write_lines(raw_dir / "B_5.json", [
        '{"broken', raw.review("U3", "B3", 30, rating="bad")])
    sources = [_source("A", reviews=gz), _source("B", reviews=plain)]
    with test_pipeline.TestPipeline() as pipeline:
        out = pipeline | t.ReadReviews(sources)
        assert_that(
            out["reviews"]
            | beam.FlatMapTuple(lambda key, batch: [
                (key, r.user_id, r.asin, r.timestamp, r.line) for r in map(Review._make, batch)]),
            equal_to([(("A", t.user_bucket("U1")), "U1", "B1", 10, 1),
                      (("A", t.user_bucket("U2")), "U2", "B2", 20, 3)]), label="Reviews")
        assert_that(
            out[t.DEAD_LETTER] | beam.Map(lambda d: (d["category"], d["file"], d["line"],
                                                     d["reason"])),
            equal_to([("A", "A_5.json.gz", 2, "not_utf8"), ("B", "B_5.json", 1, "malformed_json"),
                      ("B", "B_5.json", 2, "non_numeric_overall")]), label="DeadLetters")
        assert_that(_summed(out[t.COUNTS]), equal_to([
            (("A", "read"), 3), (("A", "dead_letter"), 1), (("B", "read"), 2),
            (("B", "dead_letter"), 2)]), label="Counts")


def test_chunk_boundaries_and_batch_flushes_change_no_line(raw_dir, raw):
    """Chunks smaller than a line, lines across chunk ends, a byte-order mark, CRLF, blank
    lines and a last line without its newline: every line is read once with its own number,
    whatever the chunk size and however often the parser hands its batches on."""
    rows = [json.dumps(raw.review(f"U{i % 7}", f"B{i}", i, text="t" * (i * 13 % 90))).encode()
            for i in range(60)]
    rows[5] += b"\r"
    rows[9] = b""
    rows[17] = b"  "
    rows[30] = b'{"broken'
    data = b"\xef\xbb\xbf" + b"\n".join(rows)  # no newline after the last line
    (raw_dir / "A_5.json").write_bytes(data)
    with gzip.open(raw_dir / "B_5.json.gz", "wb") as stream:
        stream.write(data + b"\n")
    sources = [_source("A", reviews=raw_dir / "A_5.json"),
               _source("B", reviews=raw_dir / "B_5.json.gz")]
    expected = [
        ((c, t.user_bucket(row["reviewerID"])), row["reviewerID"], row["asin"],
         row["unixReviewTime"], number)
        for c in "AB" for number, line in enumerate(rows, start=1) if number not in (10, 18, 31)
        for row in [json.loads(line)]]
    letters = [(c, f, n, reason, text) for c, f in (("A", "A_5.json"), ("B", "B_5.json.gz"))
               for n, reason, text in ((10, "blank_line", ""), (18, "blank_line", "  "),
                                       (31, "malformed_json", '{"broken'))]
    counts = [(("A", "read"), 60), (("A", "dead_letter"), 3), (("B", "read"), 60),
              (("B", "dead_letter"), 3)]
    for sizes in ({}, {"chunk_bytes": 7, "flush_reviews": 1},
                  {"chunk_bytes": 300, "spread_chunks": True},
                  {"chunk_bytes": 90, "file_parts": 3}):
        with test_pipeline.TestPipeline() as pipeline:
            out = pipeline | t.ReadReviews(sources, **sizes)
            assert_that(out["reviews"] | beam.FlatMapTuple(lambda key, batch: [
                (key, r.user_id, r.asin, r.timestamp, r.line) for r in map(Review._make, batch)]),
                equal_to(expected), label="Reviews")
            assert_that(out[t.DEAD_LETTER] | beam.Map(
                lambda d: (d["category"], d["file"], d["line"], d["reason"], d["text"])),
                equal_to(letters), label="DeadLetters")
            assert_that(_summed(out[t.COUNTS]), equal_to(counts), label="Counts")


def test_read_metadata_first_row_per_asin_wins_and_reads_python_literals(raw_dir, raw):
    path = raw.write_lines(raw_dir / "meta_A.json.gz", [
        "{'asin': 'B1', 'title': 'First', 'main_cat': 'Books'}",
        raw.meta("B2", "Other"),
        raw.meta("B1", "Second"),
        "not a record",
    ])
    with test_pipeline.TestPipeline() as pipeline:
        out = pipeline | t.ReadMetadata([_source("A", meta=path), _source("NoMeta")])
        assert_that(out["items"], equal_to([
            (("A", "B1"), ItemAttributes("First", "Books", "Unknown", "Unknown").as_tuple()),
            (("A", "B2"), ItemAttributes("Other", "Books", "Acme", "$1.00").as_tuple()),
        ]), label="Items")
        assert_that(out[t.DEAD_LETTER] | beam.Map(lambda d: (d["line"], d["reason"])),
                    equal_to([(4, "malformed_record")]), label="DeadLetters")
        assert_that(_summed(out[t.COUNTS]), equal_to([
            (("A", "metadata_rows"), 4), (("A", "metadata_dead_letter"), 1),
            (("A", "metadata_unique_asins"), 2)]), label="Counts")




def test_sequences_are_chronological_with_ties_in_file_order():
    events = [("C", _event("U", "late", 30, 1)), ("C", _event("U", "tie_second", 20, 5)),
              ("C", _event("U", "tie_first", 20, 2)), ("C", _event("U", "early", 10, 9))]
    with test_pipeline.TestPipeline() as pipeline:
        out = (pipeline | beam.Create(t.batch_reviews(events))
               | t.BuildUserSequences([_source("C")], seed=1))
        assert_that(out.sequences | beam.FlatMap(t.sequence_rows), equal_to([
            ("C", "U", (("early", 10), ("tie_first", 20), ("tie_second", 20), ("late", 30)))]))


def test_strict_dedup_drops_only_identical_consecutive_events():
    events = [
        _event("U", "A", 10, 1), _event("U", "A", 10, 2),  # identical: dropped
        _event("U", "A", 10, 3, text="other"),  # text differs: kept
        _event("U", "A", 10, 4, text="other", rating=4.0),  # rating differs: kept
        _event("U", "A", 11, 5, text="other", rating=4.0),  # time differs: kept
        _event("U", "B", 11, 6, text="other", rating=4.0),  # asin differs: kept
        _event("U", "B", 11, 7, text="other", rating=4.0),  # identical: dropped
        _event("U", "A", 12, 8), _event("U", "A", 12, 9),  # identical again: dropped
    ]
    with test_pipeline.TestPipeline() as pipeline:
        out = (pipeline | beam.Create(t.batch_reviews([("C", event) for event in events]))
               | t.BuildUserSequences([_source("C")], seed=1))
        assert_that(out.sequences | beam.FlatMap(t.sequence_rows), equal_to([
            ("C", "U", (("A", 10), ("A", 10), ("A", 10), ("A", 11), ("B", 11), ("A", 12)))]),
            label="Sequences")
        assert_that(_summed(out[t.COUNTS]), equal_to([
            (("C", "strict_duplicates"), 3), (("C", "kept"), 6), (("C", "users"), 1),
            (("C", "length:6"), 1), (("C", "before_filter:users"), 1),
            (("C", "before_filter:purchases"), 6)]),
            label="Counts")
        assert_that(out[t.ITEMS_BEFORE_FILTER], equal_to([("C", ("A", "B"))]), label="Items")


@pytest.mark.parametrize(("role", "kept_users"), [("eval", ["U3"]), ("validation", ["U2", "U3"]),
                                                  ("pretrain", ["U2", "U3"])])
def test_users_too_short_for_their_role_are_filtered_and_counted(role, kept_users):
    events = [("C", _event(user, f"I{i}", i, i)) for user, n in (("U1", 1), ("U2", 2), ("U3", 3))
              for i in range(n)]
    dropped = {"eval": (2, 3), "validation": (1, 1), "pretrain": (1, 1)}[role]
    with test_pipeline.TestPipeline() as pipeline:
        out = (pipeline | beam.Create(t.batch_reviews(events))
               | t.BuildUserSequences([_source("C", role=role)], seed=1))
        assert_that(out.sequences | beam.FlatMap(t.sequence_rows)
                    | beam.MapTuple(lambda c, user, e: user), equal_to(kept_users), label="Users")
        summed = _summed(out[t.COUNTS])
        assert_that(summed | "TooShort" >> beam.Filter(lambda kv: "too_short" in kv[0][1]),
                    equal_to([(("C", "users:too_short"), dropped[0]),
                              (("C", "filtered:too_short"), dropped[1])]), label="Counts")
        # Before the length filter every user and event counts (Table 1 "all" columns).
        assert_that(summed | "Before" >> beam.Filter(lambda kv: "before" in kv[0][1]),
                    equal_to([(("C", "before_filter:users"), 3),
                              (("C", "before_filter:purchases"), 6)]), label="BeforeFilter")


def test_user_sampling_is_a_stable_hash_of_seed_and_user():
    from calrec_core.data.sequences import user_is_sampled

    users = [f"U{i}" for i in range(400)]
    expected = sorted(user for user in users if user_is_sampled(5, "C", user, 0.5))
    assert 150 < len(expected) < 250  # about half
    assert expected != sorted(user for user in users if user_is_sampled(6, "C", user, 0.5))
    events = [("C", _event(user, f"I{i}", i, i)) for user in users for i in range(2)]
    with test_pipeline.TestPipeline() as pipeline:
        out = (pipeline | beam.Create(t.batch_reviews(events))
               | t.BuildUserSequences([_source("C", role="pretrain", rate=0.5)], seed=5))
        assert_that(out.sequences | beam.FlatMap(t.sequence_rows)
                    | beam.MapTuple(lambda c, user, e: user), equal_to(expected), label="Users")
        assert_that(_summed(out[t.COUNTS]) | beam.Filter(lambda kv: "sampled" in kv[0][1]),
                    equal_to([(("C", "users:user_sampled_out"), 400 - len(expected)),
                              (("C", "filtered:user_sampled_out"), 2 * (400 - len(expected)))]),
                    label="Counts")


def test_corpus_joins_metadata_and_gives_unknown_to_items_without_it():
    sequences = [("C", "U", (("B1", 1), ("B2", 2), ("B1", 3)))]
    attributes = ItemAttributes("Pen", "Office", "Acme", "$2")
    items = [(("C", "B1"), attributes.as_tuple()), (("C", "B9"), attributes.as_tuple())]
    with test_pipeline.TestPipeline() as pipeline:
        corpus = {"sequences": pipeline | "Seq" >> beam.Create(t.batch_sequences(sequences)),
                  "items": pipeline | "Items" >> beam.Create(items)} | t.BuildCorpus()
        assert_that(corpus, equal_to([("C", "B1", attributes.as_tuple(), True),
                                      ("C", "B2", ItemAttributes().as_tuple(), False)]))


def test_split_by_role_puts_the_target_last_and_never_leaks_later_events(tmp_path):
    events = tuple((f"I{i}", 100 + i) for i in range(5))
    sequences = [("E", "U", events), ("V", "U", events), ("P", "U", events)]
    corpus = [(c, f"I{i}", ItemAttributes(f"t{i}").as_tuple(), True) for c in "EVP"
              for i in range(5)]
    sources = [_source("E"), _source("V", role="validation"), _source("P", role="pretrain")]
    with test_pipeline.TestPipeline() as pipeline:
        _ = {"sequences": pipeline | "Seq" >> beam.Create(t.batch_sequences(sequences)),
             "corpus": pipeline | "Corpus" >> beam.Create(corpus)} | t.WriteTFRecords(
            str(tmp_path), sources, records_per_shard=10)
    written = {(c, split): read_examples(tmp_path, c, split)
               for c, splits in (("E", ("train", "valid", "test")), ("V", ("train", "valid")),
                                 ("P", ("train",))) for split in splits}
    assert {key: tuple(ex["asins"]) for key, (ex,) in written.items()} == {
        ("E", "train"): ("I0", "I1", "I2"), ("E", "valid"): ("I0", "I1", "I2", "I3"),
        ("E", "test"): ("I0", "I1", "I2", "I3", "I4"),
        ("V", "train"): ("I0", "I1", "I2", "I3"),
        ("V", "valid"): ("I0", "I1", "I2", "I3", "I4"),
        ("P", "train"): ("I0", "I1", "I2", "I3", "I4")}
    for (ex,) in written.values():
        n = len(ex["asins"])
        assert ex["texts"] == [format_item(ItemAttributes(f"t{i}")) for i in range(n)]
        assert ex["timestamps"] == [100 + i for i in range(n)]


def test_mixture_weights_follow_users_to_the_power_0_3():
    sequences = [("A", f"U{i}", ()) for i in range(8)] + [("B", "U", ())]
    with test_pipeline.TestPipeline() as pipeline:
        mixture = pipeline | beam.Create(t.batch_sequences(sequences)) | t.ComputeMixture(
            [_source("A"), _source("B"), _source("Empty")], exponent=0.3)
        total = 8**0.3 + 1
        assert_that(mixture | beam.Map(lambda m: (m["users"], {k: round(v, 12) for k, v in
                                                              m["weights"].items()})),
                    equal_to([({"A": 8, "B": 1, "Empty": 0},
                               {"A": round(8**0.3 / total, 12), "B": round(1 / total, 12),
                                "Empty": 0.0})]))


def test_write_tfrecords_shards_by_size_and_writes_every_shard(tmp_path):
    users = [f"U{i:02d}" for i in range(7)]
    events = (("I", 1), ("I", 2))
    # Category C: 7 users, so 3 shards of at most 3 per split; category D has no users.
    sources = [_source("C", role="validation"), _source("D", role="pretrain")]
    with test_pipeline.TestPipeline() as pipeline:
        counts = {"sequences": pipeline | "Seq" >> beam.Create(
                      t.batch_sequences([("C", user, events) for user in users])),
                  "corpus": pipeline | "Corpus" >> beam.Create(
                      [("C", "I", ItemAttributes("t").as_tuple(), True)])} | t.WriteTFRecords(
            str(tmp_path), sources, records_per_shard=3)
        assert_that(_summed(counts), equal_to([(("C", "train_examples"), 7),
                                               (("C", "valid_examples"), 7),
                                               (("D", "train_examples"), 0)]))
    names = sorted(path.name for path in (tmp_path / "C").iterdir())
    assert names == [f"{split}-0000{i}-of-00003.tfrecord" for split in ("train", "valid")
                     for i in range(3)]
    assert [path.name for path in (tmp_path / "D").iterdir()] == [
        "train-00000-of-00001.tfrecord"]
    for split in ("train", "valid"):
        assert sorted(ex["user_id"] for ex in read_examples(tmp_path, "C", split)) == users
        for index in range(3):  # a user's shard is the stable hash; each shard sorted by user
            with (tmp_path / "C" / records.shard_name(split, index, 3)).open("rb") as stream:
                shard = [records.decode_tf_example(data)["user_id"]
                         for data in records.iter_records(stream)]
            assert shard == sorted(user for user in users if records.shard_of(user, 3) == index)
    assert read_examples(tmp_path, "D", "train") == []

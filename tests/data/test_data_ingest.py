"""End to end on the real DirectRunner: the bundled sample, bad input, errors, the CLI."""

from __future__ import annotations

import filecmp
import json
import pathlib

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from calrec_core import cli
from calrec_core.data import (
    RolesConfig,
    load_corpus,
    load_mixture,
    load_stats,
    read_examples,
    roles_preset,
    run_ingest,
)
from calrec_core.data.records import iter_records
from calrec_core.data.sequences import user_is_sampled

SAMPLE_CATEGORIES = ("Gift_Cards", "Magazine_Subscriptions")


@pytest.fixture(scope="module")
def sample_output(sample_dir, sample_config, tmp_path_factory) -> pathlib.Path:
    output = tmp_path_factory.mktemp("sample_out")
    run_ingest(sample_dir, sample_config, output)
    return output


def _files(folder: pathlib.Path) -> list[str]:
    return sorted(str(path.relative_to(folder)) for path in folder.rglob("*") if path.is_file())


def test_sample_counts_match_the_published_figures(sample_output):
    stats = load_stats(sample_output)["categories"]
    gift, magazine = stats["Gift_Cards"], stats["Magazine_Subscriptions"]
    assert (gift["users"], gift["items"], gift["strict_duplicates"]) == (458, 148, 0)
    assert (magazine["users"], magazine["items"], magazine["strict_duplicates"]) == (348, 157, 44)
    assert magazine["items_without_metadata"] == 6 and gift["items_without_metadata"] == 0
    assert (gift["read"], magazine["read"]) == (2972, 2375)
    for counts in stats.values():
        filtered = sum(counts["filtered"].values())
        assert counts["read"] == (counts["kept"] + counts["strict_duplicates"]
                                  + counts["dead_letter"] + filtered)
        table = counts["table1"]
        assert table["density"] == pytest.approx(
            counts["purchases"] / (counts["users"] * counts["items"]))
        assert counts["examples"] == {"train": counts["users"], "valid": counts["users"],
                                      "test": counts["users"]}
        lengths = {int(n): users for n, users in counts["sequence_lengths"].items()}
        assert sum(lengths.values()) == counts["users"]
        assert sum(n * users for n, users in lengths.items()) == counts["purchases"]


def test_sample_mixture_weights(sample_output):
    mixture = load_mixture(sample_output)
    total = 458**0.3 + 348**0.3
    assert mixture["users"] == {"Gift_Cards": 458, "Magazine_Subscriptions": 348}
    assert mixture["weights"]["Gift_Cards"] == pytest.approx(458**0.3 / total)
    assert sum(mixture["weights"].values()) == pytest.approx(1.0)


def test_no_leakage_of_targets_or_later_events_into_training(sample_output):
    for category in SAMPLE_CATEGORIES:
        train, valid, test = (
            {ex["user_id"]: ex for ex in read_examples(sample_output, category, split)}
            for split in ("train", "valid", "test"))
        assert set(train) == set(valid) == set(test)
        for user, full in test.items():
            n = len(full["asins"])
            # valid/test are prefixes of the same chronological sequence.
            assert valid[user]["asins"] == full["asins"][: n - 1]
            assert train[user]["asins"] == full["asins"][: n - 2]
            assert train[user]["timestamps"] == full["timestamps"][: n - 2]
            valid_time, test_time = valid[user]["timestamps"][-1], full["timestamps"][-1]
            assert valid_time <= test_time
            assert max(train[user]["timestamps"]) <= valid_time
            assert full["timestamps"] == sorted(full["timestamps"])


def test_examples_texts_come_from_the_corpus(sample_output):
    for category in SAMPLE_CATEGORIES:
        corpus = load_corpus(sample_output, category)
        assert list(corpus.columns) == ["asin", "title", "category", "brand", "price", "text"]
        assert list(corpus.asin) == sorted(corpus.asin) and corpus.asin.is_unique
        texts = dict(zip(corpus.asin, corpus.text, strict=True))
        examples = read_examples(sample_output, category, "test")
        assert [ex["user_id"] for ex in examples] == sorted(ex["user_id"] for ex in examples)
        used = {asin for ex in examples for asin in ex["asins"]}
        assert used == set(texts)
        for ex in examples:
            assert ex["texts"] == [texts[asin] for asin in ex["asins"]]


def test_runner_parallelism_does_not_change_a_byte(sample_output, sample_dir, sample_config,
                                                   tmp_path):
    run_ingest(sample_dir, sample_config, tmp_path, [
        "--direct_num_workers=2", "--direct_running_mode=multi_processing"])
    assert _files(tmp_path) == _files(sample_output)
    _, mismatch, errors = filecmp.cmpfiles(sample_output, tmp_path, _files(sample_output),
                                           shallow=False)
    assert mismatch == [] and errors == []


@pytest.mark.xdist_group("cloud_storage")
def test_ingest_into_a_bucket_writes_the_same_bytes(sample_output, sample_dir, sample_config,
                                                    cloud_storage):
    """--output gs://... (Beam's FileSystems on the local Cloud Storage server): the same
    files, byte for byte, as a local ingest, and the readers take the bucket folder."""
    from calrec_core import storage
    from calrec_core.data import load_stats, read_examples

    bucket = cloud_storage.folder("ingest")
    run_ingest(sample_dir, sample_config, bucket)
    files = [str(path)[len(bucket) + 1:] for path in storage.files_under(bucket)]
    assert files == _files(sample_output)
    for name in files:
        assert storage.path(storage.join(bucket, name)).read_bytes() == (
            sample_output / name).read_bytes(), name
    assert load_stats(bucket) == load_stats(sample_output)
    assert read_examples(bucket, "Gift_Cards", "test") == read_examples(sample_output,
                                                                        "Gift_Cards", "test")


def test_tfrecords_read_with_beam_reader(sample_output):
    path = sample_output / "Gift_Cards" / "valid-00000-of-00001.tfrecord"
    with open(path, "rb") as stream:
        expected = list(iter_records(stream))
    with test_pipeline.TestPipeline() as pipeline:
        assert_that(pipeline | beam.io.ReadFromTFRecord(str(path)), equal_to(expected))
    assert len(expected) == 458


def _bad_input(raw_dir, raw):
    """Category Bad: dead letters, a duplicate, a too-short user, a sampled-out share;
    category Plain: no metadata file (all Unknown), uncompressed reviews."""
    lines = [raw.review("U1", "B1", 1), raw.review("U1", "B1", 1), raw.review("U1", "B2", 2),
             raw.review("U1", "B3", 3), raw.review("U2", "B1", 5),  # U2 too short
             b'{"reviewerID": "U3"', b"\xc3\x28", raw.review("U4", "B1", 1, rating="x"), b""]
    lines += [raw.review(f"S{i}", f"B{j}", j) for i in range(30) for j in range(3)]
    raw.write_lines(raw_dir / "Bad_5.json.gz", lines)
    raw.write_lines(raw_dir / "meta_Bad.json.gz", [
        raw.meta("B1", "One"), "{'asin': 'B2', 'title': 'Two', 'main_cat': ''}", "oops"])
    raw.write_lines(raw_dir / "Plain_5.json", [
        raw.review("P1", "X1", 1), raw.review("P1", "X2", 2)])
    return raw.write_config(raw_dir.parent / "roles.yaml", {
        "Bad": {"role": "eval", "user_sample_rate": 0.5}, "Plain": {"role": "pretrain"}})


def test_bad_input_is_counted_and_the_accounting_reconciles(raw_dir, raw, tmp_path):
    config = _bad_input(raw_dir, raw)
    output = tmp_path / "out"
    stats = run_ingest(raw_dir, config, output)["categories"]
    bad, plain = stats["Bad"], stats["Plain"]
    assert bad["read"] == 9 + 90 and bad["dead_letter"] == 4
    filtered = sum(bad["filtered"].values())
    assert bad["read"] == bad["kept"] + bad["strict_duplicates"] + bad["dead_letter"] + filtered
    assert bad["filtered_users"]["user_sampled_out"] > 0
    # Users and their event counts (U4's only line is a dead letter); sampling is per user.
    events = {"U1": 4, "U2": 1, **{f"S{i}": 3 for i in range(30)}}
    sampled = {user for user in events if user_is_sampled(7, "Bad", user, 0.5)}
    assert 0 < len(sampled) < len(events)
    assert bad["filtered"]["user_sampled_out"] == sum(
        n for user, n in events.items() if user not in sampled)
    assert bad["strict_duplicates"] == (1 if "U1" in sampled else 0)
    assert bad["filtered"]["too_short"] == (1 if "U2" in sampled else 0)
    assert bad["users"] == len(sampled - {"U2"})
    assert {ex["user_id"] for ex in read_examples(output, "Bad", "train")} == sampled - {"U2"}
    assert bad["metadata_dead_letter"] == 1 and bad["metadata_rows"] == 3
    assert plain["has_metadata_file"] is False and plain["items_without_metadata"] == 2
    assert load_corpus(output, "Plain").text.tolist() == [
        "Title: Unknown. Category: Unknown. Brand: Unknown. Price: Unknown."] * 2
    letters = [json.loads(line) for line in (output / "dead_letter" / "reviews.jsonl")
               .read_text().splitlines()]
    assert [(d["file"], d["line"], d["reason"]) for d in letters] == [
        ("Bad_5.json.gz", 6, "malformed_json"), ("Bad_5.json.gz", 7, "not_utf8"),
        ("Bad_5.json.gz", 8, "non_numeric_overall"), ("Bad_5.json.gz", 9, "blank_line")]
    meta_letters = (output / "dead_letter" / "metadata.jsonl").read_text().splitlines()
    assert [json.loads(line)["reason"] for line in meta_letters] == ["malformed_record"]


def test_rerun_replaces_stale_shards(raw_dir, raw, tmp_path):
    config = _bad_input(raw_dir, raw)
    output = tmp_path / "out"
    (output / "Bad").mkdir(parents=True)
    (output / "Bad" / "train-00003-of-00009.tfrecord").write_bytes(b"stale")
    run_ingest(raw_dir, config, output)
    assert sorted(p.name for p in (output / "Bad").glob("train-*")) == [
        "train-00000-of-00001.tfrecord"]


@pytest.mark.parametrize(
    ("mutate", "message"),
    [
        (lambda d: (d / "Plain_5.json").unlink(), "Plain_5.json"),
        (lambda d: (d / "Plain_5.json").write_bytes(b""), "Plain_5.json: file is empty"),
        (lambda d: (d / "Plain_5.json.gz").write_bytes(b"x"), "both"),
    ],
)
def test_file_problems_stop_before_any_work(raw_dir, raw, tmp_path, mutate, message):
    config = _bad_input(raw_dir, raw)
    mutate(raw_dir)
    output = tmp_path / "out"
    with pytest.raises((FileNotFoundError, ValueError), match=message):
        run_ingest(raw_dir, config, output)
    assert not output.exists()


def test_a_damaged_gzip_stream_stops_the_run_naming_the_file(raw_dir, raw, tmp_path):
    config = _bad_input(raw_dir, raw)
    path = raw_dir / "Bad_5.json.gz"
    path.write_bytes(path.read_bytes()[:-40])  # cut off the end of the deflate stream
    with pytest.raises(Exception, match=r"Bad_5\.json\.gz: unreadable after line"):
        run_ingest(raw_dir, config, tmp_path / "out")


@pytest.mark.parametrize(
    ("document", "message"),
    [
        ({"categories": {"A": {"role": "test"}}}, "role 'test'"),
        ({"categories": {"A": {"role": "eval", "user_sample_rate": 1.5}}}, "user_sample_rate"),
        ({"categories": {"A": {"role": "eval"}}, "sed": 1}, "unknown keys"),
        ({"categories": {}}, "categories"),
        ({"seed": "x", "categories": {"A": {"role": "eval"}}}, "seed"),
    ],
)
def test_config_problems_name_the_file(tmp_path, document, message):
    import yaml

    path = tmp_path / "roles.yaml"
    path.write_text(yaml.safe_dump(document))
    with pytest.raises(ValueError, match=message) as caught:
        run_ingest(tmp_path, path, tmp_path / "out")
    assert str(path) in str(caught.value)


def test_presets_are_valid():
    assert isinstance(roles_preset("paper"), RolesConfig)
    paper = roles_preset("paper")
    assert len(paper.categories) == 14
    assert [c.role for c in paper.categories].count("eval") == 6
    assert paper.category("Office_Products").user_sample_rate == 0.5


def test_cli_ingest_and_stats(raw_dir, raw, tmp_path, capsys):
    config = _bad_input(raw_dir, raw)
    output = tmp_path / "cli_out"
    code = cli.main(["ingest", "--input", str(raw_dir), "--config", str(config), "--output",
                     str(output), "--", "--direct_num_workers=1"])
    assert code == 0
    assert "Plain" in capsys.readouterr().out
    assert cli.main(["stats", str(output), "--json"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed == load_stats(output)
    plot = tmp_path / "lengths.png"
    assert cli.main(["stats", str(output), "--plot", str(plot)]) == 0
    table = capsys.readouterr().out
    assert "Bad" in table and "Density" in table
    assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert cli.main(["stats", str(tmp_path / "missing")]) == 1
    assert cli.main(["ingest", "--input", str(raw_dir), "--config", str(tmp_path / "nope.yaml"),
                     "--output", str(output)]) == 1


@pytest.mark.parametrize(("beam_args", "sharing"), [
    ([], {"spread_chunks": False, "file_parts": 1}),
    (["--direct_num_workers=2", "--direct_running_mode=multi_processing"],
     {"spread_chunks": False, "file_parts": 2}),
    (["--runner=DataflowRunner"], {"spread_chunks": True, "file_parts": 1}),
])
def test_each_runner_shares_a_file_between_its_workers_its_own_way(beam_args, sharing):
    from apache_beam.options.pipeline_options import PipelineOptions

    from calrec_core.data.ingest import file_sharing

    assert file_sharing(PipelineOptions(beam_args)) == sharing

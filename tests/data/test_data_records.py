"""tf.train.Example bytes and TFRecord framing, checked against hand-computed wire bytes
and Beam's own TFRecord reader (an independent implementation of the format)."""

from __future__ import annotations

import io
import struct

import apache_beam as beam
import pytest
from apache_beam.testing import test_pipeline
from apache_beam.testing.util import assert_that, equal_to

from calrec_core.data import decode_tf_example, encode_tf_example, read_examples, records

EXAMPLE = {
    "user_id": "U1",
    "category": "Gift_Cards",
    "asins": ["B1", "B2"],
    "texts": ["Title: a. Category: b. Brand: c. Price: d.", "Title: é. Category: x. Brand: y. "
              "Price: z."],
    "timestamps": [1_500_000_000, 1_600_000_000],
}


def test_example_wire_format_matches_hand_encoding():
    proto = records.Example()
    proto.features.feature["a"].int64_list.value.append(1)
    # Example.features(1) { feature(1) map entry { key(1)="a", value(2) Feature {
    #   int64_list(3) { value(1) packed [1] } } } }
    expected = bytes.fromhex("0a0c" "0a0a" "0a0161" "1205" "1a03" "0a0101")
    assert proto.SerializeToString() == expected


def test_encode_decode_round_trip_and_determinism():
    data = encode_tf_example(EXAMPLE)
    assert decode_tf_example(data) == EXAMPLE
    reordered = dict(reversed(list(EXAMPLE.items())))
    assert encode_tf_example(reordered) == data


def test_encode_rejects_lists_of_different_length():
    with pytest.raises(ValueError, match="differ in length"):
        encode_tf_example({**EXAMPLE, "timestamps": [1]})


def test_prefix_examples_are_the_bytes_of_each_prefix_encoded_alone():
    longer = {**EXAMPLE, "asins": EXAMPLE["asins"] + ["B3", "B4"],
              "texts": EXAMPLE["texts"] + ["Title: c", "Title: d"],
              "timestamps": EXAMPLE["timestamps"] + [1_700_000_000, 1_800_000_000]}
    encoded = records.encode_prefix_examples(longer, [2, 4, 3, 0, 2])
    assert sorted(encoded) == [0, 2, 3, 4]
    for length, data in encoded.items():
        alone = {**longer, **{name: longer[name][:length]
                              for name in ("asins", "texts", "timestamps")}}
        assert data == encode_tf_example(alone)
    with pytest.raises(ValueError, match="no prefix of length 5"):
        records.encode_prefix_examples(longer, [5])


def test_framing_is_read_back_by_beam_tfrecord_reader(tmp_path):
    payloads = [encode_tf_example({**EXAMPLE, "user_id": f"U{i}"}) for i in range(5)]
    path = tmp_path / "train-00000-of-00001.tfrecord"
    with open(path, "wb") as stream:
        assert records.write_records(stream, payloads) == 5
    with test_pipeline.TestPipeline() as pipeline:
        read = pipeline | beam.io.ReadFromTFRecord(str(path))
        assert_that(read, equal_to(payloads))
    with open(path, "rb") as stream:
        assert list(records.iter_records(stream)) == payloads


def test_corrupted_record_is_detected():
    framed = bytearray(records.frame_record(b"hello"))
    framed[14] ^= 0xFF  # a data byte
    with pytest.raises(ValueError, match="data checksum"):
        list(records.iter_records(io.BytesIO(bytes(framed))))
    truncated = records.frame_record(b"hello")[:-2]
    with pytest.raises(ValueError, match="truncated"):
        list(records.iter_records(io.BytesIO(truncated)))
    assert struct.unpack("<Q", framed[:8])[0] == 5


def test_shards_are_stable_and_complete_sets_are_required(tmp_path):
    assert records.shard_of("A2MN5JQMIY0FQ2", 7) == records.shard_of("A2MN5JQMIY0FQ2", 7)
    assert records.num_shards_for(0, 10) == 1 and records.num_shards_for(21, 10) == 3
    folder = tmp_path / "Cat"
    folder.mkdir()
    for index, user in ((0, "U2"), (1, "U1")):
        with open(folder / records.shard_name("train", index, 2), "wb") as stream:
            records.write_records(stream, [encode_tf_example({**EXAMPLE, "user_id": user})])
    assert [example["user_id"] for example in read_examples(tmp_path, "Cat", "train")] == [
        "U1", "U2"]
    (folder / records.shard_name("train", 1, 2)).unlink()
    with pytest.raises(ValueError, match="incomplete"):
        read_examples(tmp_path, "Cat", "train")
    with pytest.raises(FileNotFoundError):
        read_examples(tmp_path, "Cat", "valid")

"""User examples as ``tf.train.Example`` protos in TFRecord files, without TensorFlow.

The Example/Features/Feature messages are declared here with the protobuf runtime (same
package, names and field numbers as TensorFlow's ``example.proto``/``feature.proto``), in a
private descriptor pool so an installed TensorFlow never clashes with them. TFRecord
framing is ``uint64 length | masked crc32c(length) | data | masked crc32c(data)``.

One example per user and split. Features (the contract other areas read):
``user_id`` bytes, ``category`` bytes, ``asins`` bytes list, ``texts`` bytes list (item text
per asin), ``timestamps`` int64 list. For ``train`` the lists are the training sequence; for
``valid``/``test`` they are the history followed by the target as the LAST element.
"""

from __future__ import annotations

import hashlib
import re
import struct
from collections.abc import Iterable, Iterator

import google_crc32c
from google.protobuf import descriptor_pb2, descriptor_pool, message_factory

SPLITS = ("train", "valid", "test")
BYTES_FEATURES = ("user_id", "category")
BYTES_LIST_FEATURES = ("asins", "texts")
INT64_LIST_FEATURES = ("timestamps",)
SHARD_PATTERN = re.compile(r"^(?P<split>[a-z]+)-(?P<index>\d{5})-of-(?P<count>\d{5})\.tfrecord$")


def _build_example_class():
    """Declares tensorflow.Example (feature.proto + example.proto) in a private pool."""
    proto = descriptor_pb2.FileDescriptorProto(
        name="calrec/tensorflow_example.proto", package="tensorflow", syntax="proto3"
    )
    field = descriptor_pb2.FieldDescriptorProto
    repeated, optional = field.LABEL_REPEATED, field.LABEL_OPTIONAL

    def message(name, fields, nested=()):
        msg = proto.message_type.add(name=name)
        for field_name, number, label, kind, type_name, oneof in fields:
            added = msg.field.add(name=field_name, number=number, label=label, type=kind)
            if type_name:
                added.type_name = type_name
            if oneof is not None:
                added.oneof_index = oneof
        for nested_msg in nested:
            msg.nested_type.add().CopyFrom(nested_msg)
        return msg

    message("BytesList", [("value", 1, repeated, field.TYPE_BYTES, None, None)])
    message("FloatList", [("value", 1, repeated, field.TYPE_FLOAT, None, None)])
    message("Int64List", [("value", 1, repeated, field.TYPE_INT64, None, None)])
    feature = message(
        "Feature",
        [
            ("bytes_list", 1, optional, field.TYPE_MESSAGE, ".tensorflow.BytesList", 0),
            ("float_list", 2, optional, field.TYPE_MESSAGE, ".tensorflow.FloatList", 0),
            ("int64_list", 3, optional, field.TYPE_MESSAGE, ".tensorflow.Int64List", 0),
        ],
    )
    feature.oneof_decl.add(name="kind")
    # map<string, Feature> is a repeated nested FeatureEntry with map_entry set.
    entry = descriptor_pb2.DescriptorProto(name="FeatureEntry")
    entry.field.add(name="key", number=1, label=optional, type=field.TYPE_STRING)
    entry.field.add(
        name="value", number=2, label=optional, type=field.TYPE_MESSAGE,
        type_name=".tensorflow.Feature",
    )
    entry.options.map_entry = True
    message(
        "Features",
        [("feature", 1, repeated, field.TYPE_MESSAGE, ".tensorflow.Features.FeatureEntry", None)],
        nested=[entry],
    )
    message(
        "Example", [("features", 1, optional, field.TYPE_MESSAGE, ".tensorflow.Features", None)]
    )
    pool = descriptor_pool.DescriptorPool()
    pool.Add(proto)
    return message_factory.GetMessageClass(pool.FindMessageTypeByName("tensorflow.Example"))


Example = _build_example_class()


def _example_proto(example: dict):
    """(Example message, its list fields' value containers in a fixed order)."""
    lengths = {len(example[name]) for name in (*BYTES_LIST_FEATURES, *INT64_LIST_FEATURES)}
    if len(lengths) != 1:
        raise ValueError(f"asins/texts/timestamps differ in length for {example.get('user_id')!r}")
    proto = Example()
    features = proto.features.feature
    for name in BYTES_FEATURES:
        features[name].bytes_list.value.append(example[name].encode("utf-8"))
    lists = []
    for name in BYTES_LIST_FEATURES:
        values = features[name].bytes_list.value
        values.extend([value.encode("utf-8") for value in example[name]])
        lists.append(values)
    for name in INT64_LIST_FEATURES:
        values = features[name].int64_list.value
        values.extend([int(value) for value in example[name]])
        lists.append(values)
    return proto, lists


def encode_tf_example(example: dict) -> bytes:
    """Serialises one user example (see module docstring) to ``tf.train.Example`` bytes."""
    # deterministic=True sorts the map keys, so equal examples give equal bytes.
    return _example_proto(example)[0].SerializeToString(deterministic=True)


def encode_prefix_examples(example: dict, lengths) -> dict[int, bytes]:
    """``encode_tf_example`` of the example's first n list entries, for each n in ``lengths``:
    {n: bytes}. The message is built once and cut back from the longest prefix (a user's
    train, valid and test examples share all but their last items), so equal bytes at about a
    third of the cost."""
    proto, lists = _example_proto(example)
    encoded = {}
    for length in sorted(set(lengths), reverse=True):
        if not 0 <= length <= len(lists[0]):
            raise ValueError(f"no prefix of length {length} in {len(lists[0])} items")
        for values in lists:
            del values[length:]
        encoded[length] = proto.SerializeToString(deterministic=True)
    return encoded


def decode_tf_example(data: bytes) -> dict:
    """Parses ``tf.train.Example`` bytes back into python str/list/int values."""
    proto = Example.FromString(data)
    features = proto.features.feature
    missing = [
        name
        for name in (*BYTES_FEATURES, *BYTES_LIST_FEATURES, *INT64_LIST_FEATURES)
        if name not in features
    ]
    if missing:
        raise ValueError(f"example lacks features {missing}")
    result: dict = {}
    for name in BYTES_FEATURES:
        result[name] = features[name].bytes_list.value[0].decode("utf-8")
    for name in BYTES_LIST_FEATURES:
        result[name] = [value.decode("utf-8") for value in features[name].bytes_list.value]
    for name in INT64_LIST_FEATURES:
        result[name] = list(features[name].int64_list.value)
    return result


def _masked_crc(data: bytes) -> int:
    crc = google_crc32c.value(data)
    return (((crc >> 15) | (crc << 17)) + 0xA282EAD8) & 0xFFFFFFFF


def frame_record(data: bytes) -> bytes:
    """One TFRecord: length, masked crc32c of the length, data, masked crc32c of the data."""
    length = struct.pack("<Q", len(data))
    return length + struct.pack("<I", _masked_crc(length)) + data + struct.pack(
        "<I", _masked_crc(data)
    )


def iter_records(stream) -> Iterator[bytes]:
    """Yields the records of a TFRecord byte stream, checking both checksums."""
    while True:
        header = stream.read(12)
        if not header:
            return
        if len(header) != 12:
            raise ValueError("truncated TFRecord header")
        length_bytes, (length_crc,) = header[:8], struct.unpack("<I", header[8:])
        if _masked_crc(length_bytes) != length_crc:
            raise ValueError("TFRecord length checksum mismatch")
        (length,) = struct.unpack("<Q", length_bytes)
        data = stream.read(length)
        footer = stream.read(4)
        if len(data) != length or len(footer) != 4:
            raise ValueError("truncated TFRecord data")
        if _masked_crc(data) != struct.unpack("<I", footer)[0]:
            raise ValueError("TFRecord data checksum mismatch")
        yield data


def write_records(stream, records: Iterable[bytes]) -> int:
    """Writes framed records to a binary stream; returns how many."""
    count = 0
    for record in records:
        stream.write(frame_record(record))
        count += 1
    return count


def shard_name(split: str, index: int, num_shards: int) -> str:
    return f"{split}-{index:05d}-of-{num_shards:05d}.tfrecord"


def shard_of(user_id: str, num_shards: int) -> int:
    """Stable (runner- and process-independent) shard of a user."""
    digest = hashlib.blake2b(user_id.encode("utf-8"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % num_shards


def num_shards_for(num_records: int, records_per_shard: int) -> int:
    return max(1, -(-num_records // records_per_shard))

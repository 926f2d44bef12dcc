"""Training examples and batches: augmentation, mixture sampling, layout, host sharding, leakage."""

from __future__ import annotations

import collections

import numpy as np
import pytest

from calrec_core.data import read_examples
from calrec_core.model import make_tiny_tokenizer
from calrec_core.template import EncodedExample
from calrec_core.train.batching import (
    ExampleEncoder,
    bucket_length,
    collate,
    host_rows,
    split_microbatches,
)
from calrec_core.train.config import TrainConfig
from calrec_core.train.examples import (
    CategorySequences,
    MixtureSampler,
    augment,
    category_roles,
    load_training_sequences,
)
from calrec_core.train.stream import BatchStream


def _sequences(name, lengths):
    return CategorySequences(
        category=name,
        user_ids=tuple(f"{name}-u{i}" for i in range(len(lengths))),
        texts=tuple(tuple(f"{name} item {i}.{j}" for j in range(n)) for i, n in enumerate(lengths)),
    )


def test_augment_drops_last_items_and_keeps_a_history():
    texts = ["a", "b", "c", "d", "e"]
    assert augment(texts, 0) == (("a", "b", "c", "d"), "e")
    assert augment(texts, 3) == (("a",), "b")
    with pytest.raises(ValueError, match="cannot drop 4"):
        augment(texts, 4)


def test_sampler_is_a_pure_function_of_seed_and_step():
    sequences = {"A": _sequences("A", [2, 3, 9, 6]), "B": _sequences("B", [7, 4])}
    make = lambda seed: MixtureSampler(sequences, {"A": 1.0, "B": 1.0}, seed=seed,  # noqa: E731
                                       stream="stage1", max_drop_last=4)
    first, again, other_seed = make(0), make(0), make(1)
    batch = [first.example(5, slot) for slot in range(16)]
    assert batch == [again.example(5, slot) for slot in range(16)]
    assert batch != [first.example(6, slot) for slot in range(16)]
    assert batch != [other_seed.example(5, slot) for slot in range(16)]


def test_sampler_follows_mixture_weights_and_drop_range():
    sequences = {"A": _sequences("A", [2, 3, 9]), "B": _sequences("B", [7, 4])}
    sampler = MixtureSampler(sequences, {"A": 0.8, "B": 0.2}, seed=3, stream="s",
                             max_drop_last=4)
    refs = [sampler.example(step, slot) for step in range(100) for slot in range(40)]
    share_a = sum(ref.category == "A" for ref in refs) / len(refs)
    assert share_a == pytest.approx(0.8, abs=0.03)
    drops = collections.defaultdict(set)
    for ref in refs:
        n = len(sequences[ref.category].texts[ref.user_index])
        drops[n].add(ref.drop_last)
        history, target = sampler.texts(ref)
        assert len(history) >= 1 and target == sequences[ref.category].texts[ref.user_index][
            n - ref.drop_last - 1]
    assert drops[2] == {0} and drops[3] == {0, 1} and drops[9] == {0, 1, 2, 3, 4}


def test_sampler_rejects_missing_or_bad_weights():
    sequences = {"A": _sequences("A", [3])}
    with pytest.raises(ValueError, match="no mixture weight"):
        MixtureSampler(sequences, {"B": 1.0}, seed=0, stream="s", max_drop_last=4)
    with pytest.raises(ValueError, match="bad mixture weights"):
        MixtureSampler(sequences, {"A": 0.0}, seed=0, stream="s", max_drop_last=4)


def test_collate_layout_matches_the_two_towers():
    bos, pad = 2, 0
    examples = [EncodedExample([bos, 10, 11, 12], [20, 21, 1], 1),
                EncodedExample([bos, 13, 14], [22, 1], 1)]
    batch = collate(examples, seq_len=8, target_len=4, bos_id=bos, pad_id=pad)
    assert batch.tokens.tolist() == [[2, 10, 11, 12, 20, 21, 1, 0], [2, 13, 14, 22, 1, 0, 0, 0]]
    assert batch.history_mask.tolist()[0] == [0, 1, 1, 1, 0, 0, 0, 0]
    assert batch.target_mask.tolist()[1] == [0, 0, 0, 1, 1, 0, 0, 0]
    for row in range(2):
        for k in np.flatnonzero(batch.label_mask[row]):
            # The logits at position p predict the token at p + 1.
            assert batch.tokens[row, batch.logits_at[row, k] + 1] == batch.labels[row, k]
    assert batch.item_tokens.tolist() == [[2, 20, 21, 1, 0], [2, 22, 1, 0, 0]]
    assert batch.item_pool_mask.tolist()[1] == [0, 1, 1, 0, 0]
    # v^T and v^TU pool the same token ids.
    for row in range(2):
        assert (batch.tokens[row][batch.target_mask[row]].tolist() ==
                batch.item_tokens[row][batch.item_pool_mask[row]].tolist())
    with pytest.raises(ValueError, match="does not fit"):
        collate(examples, seq_len=6, target_len=4, bos_id=bos, pad_id=pad)


def test_bucket_length_and_microbatches():
    assert bucket_length(65, 64, 1000) == 128
    assert bucket_length(64, 64, 1000) == 64
    assert bucket_length(999, 64, 500) == 500
    examples = [EncodedExample([2, 5], [6, 1], 1)] * 6
    batch = split_microbatches(collate(examples, seq_len=4, target_len=2, bos_id=2, pad_id=0), 3)
    assert batch.tokens.shape == (3, 2, 4)
    with pytest.raises(ValueError, match="microbatches"):
        split_microbatches(batch._replace(tokens=np.zeros((5, 4))), 2)


def test_hosts_feed_disjoint_rows_of_every_microbatch():
    rows = [host_rows(16, 2, index, 4) for index in range(4)]
    assert sorted(sum(rows, [])) == list(range(16))
    assert rows[1] == [2, 3, 10, 11]
    with pytest.raises(ValueError, match="hosts"):
        host_rows(12, 2, 0, 4)


def test_host_shares_reassemble_the_single_host_batch():
    sequences = {"A": _sequences("A", [5, 6, 3, 8]), "B": _sequences("B", [4, 9])}
    sampler = MixtureSampler(sequences, {"A": 1, "B": 2}, seed=0, stream="s", max_drop_last=4)
    config = TrainConfig.tiny()
    encoder = ExampleEncoder(make_tiny_tokenizer(512), config.max_input_len,
                             config.max_target_len)
    whole = BatchStream(sampler, encoder, config, 0, 1).local_batch(7)
    shares = [BatchStream(sampler, encoder, config, i, 2).local_batch(7) for i in range(2)]
    for name, array in whole._asdict().items():
        joined = np.concatenate([getattr(share, name) for share in shares], axis=1)
        np.testing.assert_array_equal(joined, array, err_msg=name)


def test_training_examples_come_only_from_the_train_split(ingested_sample):
    categories = ["Gift_Cards", "Magazine_Subscriptions"]
    assert category_roles(ingested_sample, categories) == {c: "eval" for c in categories}
    sequences = load_training_sequences(ingested_sample, categories)
    sampler = MixtureSampler(sequences, {c: 1.0 for c in categories}, seed=0, stream="stage1",
                             max_drop_last=4)
    valid_lengths = {}
    for category in categories:
        train = {r["user_id"]: r["texts"] for r in read_examples(ingested_sample, category,
                                                                  "train")}
        valid = {r["user_id"]: r["texts"] for r in read_examples(ingested_sample, category,
                                                                  "valid")}
        test = {r["user_id"]: r["texts"] for r in read_examples(ingested_sample, category,
                                                                 "test")}
        loaded = sequences[category]
        assert {u: list(t) for u, t in zip(loaded.user_ids, loaded.texts, strict=True)} == {
            u: t for u, t in train.items() if len(t) >= 2}
        # The held-out targets sit after every training sequence in time.
        for user, texts in train.items():
            assert valid[user][:-1] == texts and test[user][:-2] == texts
            valid_lengths[category, user] = len(valid[user])
    for step in range(50):
        for slot in range(8):
            ref = sampler.example(step, slot)
            user = sequences[ref.category].user_ids[ref.user_index]
            history, target = sampler.texts(ref)
            train_texts = list(sequences[ref.category].texts[ref.user_index])
            # Augmentation only truncates: the example is a prefix of the training sequence,
            # so its target comes before the validation target (the valid split's last item).
            assert [*history, target] == train_texts[: len(history) + 1]
            assert len(history) + 1 < valid_lengths[ref.category, user]


def test_missing_category_fails_clearly(ingested_sample):
    from calrec_core.errors import CalrecError

    # The folder's stats.json names the categories its last ingest produced.
    with pytest.raises(CalrecError, match="holds no category 'Nope': its last ingest produced"):
        load_training_sequences(ingested_sample, ["Nope"])

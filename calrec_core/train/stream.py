"""The batch of any step, as a pure function of (seed, stream, step): resumable by step number."""

from __future__ import annotations

import math
from collections.abc import Sequence

import jax
import numpy as np

from calrec_core.train.batching import (
    Batch,
    ExampleEncoder,
    bucket_length,
    collate,
    host_rows,
    pack,
    split_microbatches,
)
from calrec_core.train.config import TrainConfig
from calrec_core.train.examples import MixtureSampler
from calrec_core.train.shapes import (
    PLAN_STEPS,
    ShapeLadder,
    balance,
    ladder_from,
    plan_ladder,
)


class BatchStream:
    """Builds this host's share of step ``step``'s global batch.

    Every host encodes the whole global batch (segment encodings are cached, so this is cheap)
    to agree on the padded length, then packs only its own rows. With ``config.packing`` every
    host packs every microbatch the same way and keeps its contiguous share of the rows, so the
    row count is rounded up to ``row_multiple`` (the devices of the mesh's batch axes); packed
    steps take one of at most three fixed shapes (``shapes.py``), sized from the first
    PLAN_STEPS steps' users.
    """

    def __init__(
        self,
        sampler: MixtureSampler,
        encoder: ExampleEncoder,
        config: TrainConfig,
        process_index: int | None = None,
        process_count: int | None = None,
        row_multiple: int = 1,
    ) -> None:
        self.sampler = sampler
        self.encoder = encoder
        self.config = config
        index = jax.process_index() if process_index is None else process_index
        count = jax.process_count() if process_count is None else process_count
        # microbatches=0 (auto) is resolved later; until then the stream only measures.
        self.rows = host_rows(config.batch_size, config.microbatches or 1, index, count)
        self.process_index, self.process_count = index, count
        self.row_multiple = math.lcm(row_multiple, count)
        self._ladder: ShapeLadder | None = None

    def global_examples(self, step: int):
        refs = [self.sampler.example(step, slot) for slot in range(self.config.batch_size)]
        return refs, [self.encoder(*self.sampler.texts(ref)) for ref in refs]

    def tokens_per_user(self, step: int) -> float:
        """Computed user-tower tokens per user of a step (for sizing microbatches): the mean
        real length over the 85 % packing target when packing, else the padded length."""
        _, encoded = self.global_examples(step)
        lengths = [len(e.prompt_ids) + len(e.target_ids) for e in encoded]
        if self.config.packing:
            return sum(lengths) / len(lengths) / 0.85
        return float(bucket_length(max(lengths), self.config.length_bucket,
                                   self.config.max_sequence_len))

    def local_batch(self, step: int) -> Batch:
        """(A, B / A / hosts, ...) numpy arrays of this host's rows."""
        if self.config.microbatches < 1:
            raise ValueError("resolve microbatches=0 (auto) before drawing batches")
        _, encoded = self.global_examples(step)
        if self.config.packing:
            return self._packed(encoded)
        longest = max(len(e.prompt_ids) + len(e.target_ids) for e in encoded)
        seq_len = bucket_length(longest, self.config.length_bucket, self.config.max_sequence_len)
        local = collate(
            [encoded[row] for row in self.rows], seq_len=seq_len,
            target_len=self.config.max_target_len, bos_id=self.encoder.tokenizer.bos_id,
            pad_id=self.encoder.tokenizer.pad_id,
        )
        split = split_microbatches(local, self.config.microbatches)
        # Segment ids name the user's slot in the whole microbatch, not in this host's share.
        offset = self.process_index * (self.config.batch_size // self.config.microbatches
                                       // self.process_count)
        return split._replace(**{
            name: np.where(ids > 0, ids + offset, 0).astype(np.int32)
            for name, ids in (("segment_ids", split.segment_ids),
                              ("item_segment_ids", split.item_segment_ids))
        })

    def microbatch_users(self, step: int):
        """Step ``step``'s encoded users, one list per microbatch (balanced in tokens)."""
        return balance(self.global_examples(step)[1], self.config.microbatches)

    @property
    def ladder(self) -> ShapeLadder:
        """The run's packed step shapes (from steps 0 .. PLAN_STEPS - 1, whatever step a resumed
        run starts at)."""
        if self._ladder is None and self.config.step_shapes:
            self._ladder = ladder_from(
                self.config.step_shapes, self.config.batch_size // self.config.microbatches,
                self.config.max_sequence_len, self.config.max_target_len, self.row_multiple)
        if self._ladder is None:
            self._ladder = plan_ladder(
                [self.microbatch_users(step) for step in range(PLAN_STEPS)],
                max_sequence_len=self.config.max_sequence_len,
                max_target_len=self.config.max_target_len, row_multiple=self.row_multiple)
        return self._ladder

    def _packed(self, encoded) -> Batch:
        micro = self.config.microbatches
        users = len(encoded) // micro
        parts = balance(encoded, micro)
        shape, plans = self.ladder.fit(parts)
        encoded = [example for part in parts for example in part]
        share = shape.rows // self.process_count
        item_share = shape.item_rows // self.process_count
        user_share = users // self.process_count
        i = self.process_index
        return pack(
            encoded, plans, seq_len=shape.seq_len, item_len=shape.item_len, rows=shape.rows,
            item_rows=shape.item_rows, target_len=shape.target_len,
            bos_id=self.encoder.tokenizer.bos_id, pad_id=self.encoder.tokenizer.pad_id,
            row_slice=slice(i * share, (i + 1) * share),
            item_slice=slice(i * item_share, (i + 1) * item_share),
            user_slice=slice(i * user_share, (i + 1) * user_share),
        )


def shared_ladder(data_dir, config: TrainConfig, tokenizer, row_multiple: int = 1) -> ShapeLadder:
    """One ladder for Stage I and every Stage II of ``data_dir`` (from the first steps of each
    stage's stream), so that all stage runs of an experiment share their compiled steps.
    ``config.microbatches`` must be resolved."""
    from calrec_core.data import load_mixture
    from calrec_core.train.examples import category_roles, load_training_sequences

    weights = {name: float(w) for name, w in load_mixture(data_dir)["weights"].items()}
    roles = category_roles(data_dir, sorted(weights))
    streams = [("stage1", weights)] + [("stage2", {name: 1.0}) for name, role in roles.items()
                                       if role == "eval"]
    encoder = ExampleEncoder(tokenizer, config.max_input_len, config.max_target_len)
    sample = []
    for stage, mixture in streams:
        sampler = MixtureSampler(load_training_sequences(data_dir, sorted(mixture)), mixture,
                                 seed=config.seed, stream=stage,
                                 max_drop_last=config.max_drop_last)
        stream = BatchStream(sampler, encoder, config, process_index=0, process_count=1)
        sample += [stream.microbatch_users(step)
                   for step in range(max(8, PLAN_STEPS // len(streams)))]
    return plan_ladder(sample, max_sequence_len=config.max_sequence_len,
                       max_target_len=config.max_target_len, row_multiple=row_multiple)


def to_global(batch: Batch, sharding: jax.sharding.Sharding) -> Batch:
    """Assembles the hosts' (A, rows, ...) shares into global arrays sharded over the rows.
    Every host holds as many rows (packing pads each host's share alike), so the global row
    count is the local one times the hosts."""

    def assemble(array: np.ndarray) -> jax.Array:
        shape = (array.shape[0], array.shape[1] * jax.process_count(), *array.shape[2:])
        return jax.make_array_from_process_local_data(sharding, array, shape)

    return Batch(*(assemble(array) for array in batch))


def replicated_to_global(batch: Batch, sharding: jax.sharding.Sharding) -> Batch:
    """Global arrays from a batch every host holds whole (validation batches)."""
    def assemble(array: np.ndarray) -> jax.Array:
        return jax.make_array_from_callback(array.shape, sharding, lambda index: array[index])

    return Batch(*(assemble(array) for array in batch))


def validation_batches(
    pairs: Sequence[tuple[Sequence[str], str]], encoder: ExampleEncoder, config: TrainConfig,
    rows: int,
) -> list[Batch]:
    """(rows, max_sequence_len) batches of validation (history, target) pairs, all of one
    shape (one compiled program); the last batch is filled with copies of its first row whose
    labels are masked out, so they add nothing."""
    batches = []
    for start in range(0, len(pairs), rows):
        chunk = [encoder(history, target) for history, target in pairs[start : start + rows]]
        real = len(chunk)
        chunk += [chunk[0]] * (rows - real)
        batch = collate(chunk, seq_len=config.max_sequence_len, target_len=config.max_target_len,
                        bos_id=encoder.tokenizer.bos_id, pad_id=encoder.tokenizer.pad_id)
        batch.label_mask[real:] = False
        batch.user_mask[real:] = False
        batches.append(batch)
    return batches

"""The batch of any step, as a pure function of (seed, stream, step): resumable by step number."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np

from calrec_core.train.batching import (
    Batch,
    ExampleEncoder,
    bucket_length,
    collate,
    host_rows,
    split_microbatches,
)
from calrec_core.train.config import TrainConfig
from calrec_core.train.examples import MixtureSampler


class BatchStream:
    """Builds this host's share of step ``step``'s global batch.

    Every host encodes the whole global batch (segment encodings are cached, so this is cheap)
    to agree on the padded length, then packs only its own rows.
    """

    def __init__(
        self,
        sampler: MixtureSampler,
        encoder: ExampleEncoder,
        config: TrainConfig,
        process_index: int | None = None,
        process_count: int | None = None,
    ) -> None:
        self.sampler = sampler
        self.encoder = encoder
        self.config = config
        index = jax.process_index() if process_index is None else process_index
        count = jax.process_count() if process_count is None else process_count
        self.rows = host_rows(config.batch_size, config.microbatches, index, count)

    def global_examples(self, step: int):
        refs = [self.sampler.example(step, slot) for slot in range(self.config.batch_size)]
        return refs, [self.encoder(*self.sampler.texts(ref)) for ref in refs]

    def local_batch(self, step: int) -> Batch:
        """(A, B / A / hosts, ...) numpy arrays of this host's rows."""
        _, encoded = self.global_examples(step)
        longest = max(len(e.prompt_ids) + len(e.target_ids) for e in encoded)
        seq_len = bucket_length(longest, self.config.length_bucket, self.config.max_sequence_len)
        local = collate(
            [encoded[row] for row in self.rows], seq_len=seq_len,
            target_len=self.config.max_target_len, bos_id=self.encoder.tokenizer.bos_id,
            pad_id=self.encoder.tokenizer.pad_id,
        )
        return split_microbatches(local, self.config.microbatches)


def to_global(batch: Batch, sharding: jax.sharding.Sharding, global_rows: int) -> Batch:
    """Assembles the hosts' (A, rows, ...) shares into global arrays sharded over the rows."""

    def assemble(array: np.ndarray) -> jax.Array:
        shape = (array.shape[0], global_rows, *array.shape[2:])
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
    """Fixed-size (rows, ...) batches of validation (history, target) pairs; the last batch is
    filled with copies of its first row whose labels are masked out, so they add nothing."""
    batches = []
    for start in range(0, len(pairs), rows):
        chunk = [encoder(history, target) for history, target in pairs[start : start + rows]]
        real = len(chunk)
        chunk += [chunk[0]] * (rows - real)
        longest = max(len(e.prompt_ids) + len(e.target_ids) for e in chunk)
        seq_len = bucket_length(longest, config.length_bucket, config.max_sequence_len)
        batch = collate(chunk, seq_len=seq_len, target_len=config.max_target_len,
                        bos_id=encoder.tokenizer.bos_id, pad_id=encoder.tokenizer.pad_id)
        batch.label_mask[real:] = False
        batches.append(batch)
    return batches

"""The weights cache's own I/O: block-wise writing and aligned reading keep every byte."""

from __future__ import annotations

import numpy as np
import pytest

from calrec_core.model.loading import (
    _DEVICE_ALIGNMENT,
    RowBlocks,
    _save_row_blocks,
    read_npy_aligned,
)


def test_row_blocks_write_exactly_what_np_save_writes(tmp_path):
    rng = np.random.default_rng(0)
    whole = rng.standard_normal((1_000, 24)).astype(np.float32)
    blocks = RowBlocks(shape=whole.shape,
                       blocks=lambda: (whole[start:start + 333] for start in range(0, 1_000, 333)))
    _save_row_blocks(tmp_path / "blocks.npy", blocks)
    np.save(tmp_path / "whole.npy", whole)
    assert (tmp_path / "blocks.npy").read_bytes() == (tmp_path / "whole.npy").read_bytes()


def test_row_blocks_refuse_a_wrong_row_count_or_width(tmp_path):
    short = RowBlocks(shape=(10, 4), blocks=lambda: iter([np.zeros((9, 4), np.float32)]))
    with pytest.raises(ValueError, match="9 rows written, 10 expected"):
        _save_row_blocks(tmp_path / "short.npy", short)
    wide = RowBlocks(shape=(10, 4), blocks=lambda: iter([np.zeros((10, 5), np.float32)]))
    with pytest.raises(ValueError, match=r"block of shape \(10, 5\)"):
        _save_row_blocks(tmp_path / "wide.npy", wide)


@pytest.mark.parametrize("array", [
    np.arange(7 * 5 * 3, dtype=np.float32).reshape(7, 5, 3),
    np.asfortranarray(np.arange(12, dtype=np.float64).reshape(3, 4)),
    np.float32(2.5) * np.ones((), np.float32),
    np.zeros((0, 8), np.float32),
])
def test_aligned_read_equals_np_load_in_a_fresh_writable_aligned_buffer(tmp_path, array):
    path = tmp_path / "a.npy"
    np.save(path, array)
    read = read_npy_aligned(path)
    expected = np.load(path)
    assert read.dtype == expected.dtype and read.shape == expected.shape
    np.testing.assert_array_equal(read, expected)
    assert read.flags.writeable and not isinstance(read, np.memmap)
    if read.size:
        assert read.ctypes.data % _DEVICE_ALIGNMENT == 0
    read[...] = 0  # the file is never written through the array
    np.testing.assert_array_equal(np.load(path), expected)


def test_aligned_read_refuses_a_truncated_file(tmp_path):
    path = tmp_path / "a.npy"
    np.save(path, np.ones((100, 10), np.float32))
    path.write_bytes(path.read_bytes()[:-8])
    with pytest.raises(ValueError, match="truncated"):
        read_npy_aligned(path)

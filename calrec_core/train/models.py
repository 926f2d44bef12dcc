"""Which network a run trains, and how a trained one is exported and loaded back.

``model.json`` of an export records the architecture (Gemma3Config fields), the run's model
name and how to rebuild the tokenizer; a Gemma tokenizer is saved beside it, so
``load_trained`` needs nothing but the folder.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from calrec_core.train.checkpoint import export_model, read_model_info, restore_params
from calrec_core.train.config import TrainConfig

TINY_VOCAB = 512
TOKENIZER_DIR = "tokenizer"


def _dtype(name: str):
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def architecture_of(model) -> dict[str, Any]:
    return dataclasses.asdict(model.config)


def _config_from(architecture: dict[str, Any]):
    from calrec_core.model.config import Gemma3Config

    known = {field.name for field in dataclasses.fields(Gemma3Config)}
    unknown = {key: value for key, value in architecture.items()
               if key not in known and value is not None}
    if unknown:
        raise ValueError(f"the checkpoint's architecture has fields this version of the model "
                         f"does not know: {sorted(unknown)}")
    values = {key: value for key, value in architecture.items() if key in known}
    if values.get("layer_types") is not None:
        values["layer_types"] = tuple(values["layer_types"])
    return Gemma3Config(**values)


def fresh_model(config: TrainConfig):
    """(model, tokenizer) to start from without a checkpoint: random tiny or pretrained Gemma."""
    from calrec_core.model.gemma import Gemma3

    if config.model == "tiny":
        from calrec_core.model.config import Gemma3Config
        from calrec_core.model.tokenizer import make_tiny_tokenizer

        tokenizer = make_tiny_tokenizer(TINY_VOCAB)
        model = Gemma3(Gemma3Config.tiny(vocab_size=TINY_VOCAB), rngs=nnx.Rngs(config.seed),
                       dtype=_dtype(config.compute_dtype), remat=config.remat)
        return model, tokenizer
    from calrec_core.model import load_pretrained

    model, tokenizer = load_pretrained(dtype=_dtype(config.compute_dtype))
    if config.remat:
        # Same parameters, layers rematerialised in the backward pass: rebuild around them.
        rebuilt = nnx.eval_shape(lambda: Gemma3(model.config, rngs=nnx.Rngs(0),
                                                dtype=_dtype(config.compute_dtype), remat=True))
        nnx.update(rebuilt, nnx.state(model, nnx.Param))
        model = rebuilt
    return model, tokenizer


def tokenizer_info(tokenizer) -> dict[str, Any]:
    from calrec_core.model.tokenizer import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        return {"kind": "byte", "vocab_size": tokenizer.vocab_size}
    return {"kind": "saved", "path": TOKENIZER_DIR}


def export_trained(directory, params, model, tokenizer, config: TrainConfig,
                   extra: dict[str, Any]) -> pathlib.Path:
    """Exports parameters, architecture and tokenizer so ``load_trained`` can rebuild it."""
    directory = pathlib.Path(directory)
    info = {
        "model": config.model,
        "architecture": architecture_of(model),
        "tokenizer": tokenizer_info(tokenizer),
        "train_config": config.to_dict(),
        **extra,
    }
    if info["tokenizer"]["kind"] == "saved" and jax.process_index() == 0:
        tokenizer.save(directory / TOKENIZER_DIR)
    return export_model(directory, params, info)


def load_tokenizer(directory, info: dict[str, Any]):
    from calrec_core.model.tokenizer import Tokenizer, make_tiny_tokenizer

    spec = info["tokenizer"]
    if spec["kind"] == "byte":
        return make_tiny_tokenizer(spec["vocab_size"])
    return Tokenizer.load(pathlib.Path(directory) / spec["path"])


def load_trained(checkpoint_dir, *, compute_dtype: str = "float32", remat: bool = False):
    """(model, tokenizer) of an exported model (a StageResult's checkpoint_dir), in a fresh
    process. ``compute_dtype`` only changes the arithmetic; parameters stay float32."""
    from calrec_core.model.gemma import Gemma3

    info = read_model_info(checkpoint_dir)
    architecture = _config_from(info["architecture"])
    abstract = nnx.eval_shape(lambda: Gemma3(architecture, rngs=nnx.Rngs(0),
                                             dtype=_dtype(compute_dtype), remat=remat))
    graphdef, abstract_params = nnx.split(abstract, nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
        nnx.to_pure_dict(abstract_params),
    )
    params = restore_params(checkpoint_dir, target)
    return nnx.merge(graphdef, params), load_tokenizer(checkpoint_dir, info)


def check_same_architecture(expected: dict[str, Any], found: dict[str, Any], where: str) -> None:
    """Fails clearly when a checkpoint was written by another architecture."""
    if _config_from(expected) != _config_from(found):
        differing = sorted(key for key in set(expected) | set(found)
                           if expected.get(key) != found.get(key))
        raise ValueError(f"{where} holds another architecture (fields differ: {differing})")

"""The exported-model format: parameters, ``model.json`` and the tokenizer, in one folder.

``model.json`` records the architecture (Gemma3Config fields), the model name, how to rebuild the
tokenizer and whatever the exporter adds (the training config, the stage, the step); a Gemma
tokenizer is saved beside it, so ``load_trained`` needs nothing but the folder. This module knows
nothing of training: the trainer passes its config in as plain data.

``model.json`` also holds ``fingerprint``, a content hash of the parameters, so whatever is
computed from an export can tell when the export changed. An export is written into a
temporary sibling folder (``.<name>.partial``), ``model.json`` last, then renamed into place
with the old export moved aside (``.<name>.old``) between the two renames. A folder is a
complete export exactly when it holds ``model.json``, so after kills at any moments readers
take the newest complete one of the three (``resolve_export``: a finished partial, else the
folder, else the old one) without changing anything, and the next export first finishes what
a killed one left (``_recover``). Cloud Storage has no folder rename, so there ``model.json``
is the commit marker instead: it is deleted before the parameters are rewritten and written
last.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
import jax.numpy as jnp
import orbax.checkpoint as ocp
from flax import nnx

from calrec_core import storage
from calrec_core.fingerprint import arrays_digest, tree_digest
from calrec_core.model.config import Gemma3Config

MODEL_FILE = "model.json"
PARAMS_DIR = "params"
TOKENIZER_DIR = "tokenizer"


def dtype_named(name: str):
    """The jnp dtype of a compute-dtype name ("float32" or "bfloat16")."""
    return jnp.bfloat16 if name == "bfloat16" else jnp.float32


def architecture_of(model) -> dict[str, Any]:
    return dataclasses.asdict(model.config)


def config_from(architecture: dict[str, Any]) -> Gemma3Config:
    """The Gemma3Config of a recorded architecture; fails on fields this version does not know."""
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


def check_same_architecture(expected: dict[str, Any], found: dict[str, Any], where: str) -> None:
    """Fails clearly when a checkpoint was written by another architecture."""
    if config_from(expected) != config_from(found):
        differing = sorted(key for key in set(expected) | set(found)
                           if expected.get(key) != found.get(key))
        raise ValueError(f"{where} holds another architecture (fields differ: {differing})")


def tokenizer_info(tokenizer) -> dict[str, Any]:
    from calrec_core.model.tokenizer import ByteTokenizer

    if isinstance(tokenizer, ByteTokenizer):
        return {"kind": "byte", "vocab_size": tokenizer.vocab_size}
    return {"kind": "saved", "path": TOKENIZER_DIR}


def load_tokenizer(directory, info: dict[str, Any]):
    from calrec_core.model.tokenizer import Tokenizer, make_tiny_tokenizer

    spec = info["tokenizer"]
    if spec["kind"] == "byte":
        return make_tiny_tokenizer(spec["vocab_size"])
    return Tokenizer.load(storage.path(directory) / spec["path"])


def _staging_dirs(directory: storage.Path) -> tuple[storage.Path, storage.Path]:
    """(the new export's temporary folder, the old export's folder while it is replaced)."""
    return (directory.with_name(f".{directory.name}.partial"),
            directory.with_name(f".{directory.name}.old"))


def _complete(folder: storage.Path) -> bool:
    return (folder / MODEL_FILE).is_file()


def resolve_export(directory) -> storage.Path:
    """The folder holding the newest complete export of ``directory``: a staged export whose
    renames a kill cut short, else ``directory``, else the previous export moved aside."""
    directory = storage.path(directory)
    if storage.is_remote(directory):
        return directory
    partial, old = _staging_dirs(directory)
    for folder in (partial, directory, old):
        if _complete(folder):
            return folder
    raise FileNotFoundError(f"{directory / MODEL_FILE} not found: {directory} is not an "
                            "exported calrec model")


def _promote(directory: storage.Path, partial: storage.Path, old: storage.Path) -> None:
    """Renames the complete ``partial`` over ``directory``; after a kill at any point a
    complete export remains (see resolve_export)."""
    storage.remove_tree(old)
    if directory.exists():
        os.replace(directory, old)
    os.replace(partial, directory)
    storage.remove_tree(old)


def _recover(directory: storage.Path) -> None:
    """Finishes what killed exports left: the newest complete export into ``directory``,
    nothing aside."""
    partial, old = _staging_dirs(directory)
    if _complete(partial):
        _promote(directory, partial, old)
        return
    storage.remove_tree(partial)
    if not _complete(directory) and _complete(old):
        storage.remove_tree(directory)
        os.replace(old, directory)
    storage.remove_tree(old)


def export_model(directory, params, model_info: dict[str, Any],
                 write_extra=None) -> storage.Path:
    """Writes the parameters and ``model.json`` (with the parameters' ``fingerprint``) into a
    temporary folder, then renames it over ``directory`` (on gs://: in place, ``model.json``
    last). ``write_extra(folder)`` may add files (the tokenizer) before ``model.json``."""
    directory = storage.path(directory)
    remote = storage.is_remote(directory)
    partial, old = _staging_dirs(directory)
    if remote:
        partial = directory
    info = {**model_info, "fingerprint": arrays_digest(params)}
    if jax.process_index() == 0:
        if remote:
            (directory / MODEL_FILE).unlink(missing_ok=True)  # the old export is void from now
        else:
            _recover(directory)
        partial.mkdir(parents=True, exist_ok=True)
    if jax.process_count() > 1:  # every host writes its shards: none before the folder exists
        from jax.experimental import multihost_utils

        multihost_utils.sync_global_devices("calrec export")
    with ocp.StandardCheckpointer() as checkpointer:
        checkpointer.save(partial / PARAMS_DIR, params, force=True)
        checkpointer.wait_until_finished()
    if jax.process_index() == 0:
        if write_extra is not None:
            write_extra(partial)
        storage.write_atomic(partial / MODEL_FILE, json.dumps(info, indent=2, sort_keys=True))
        if not remote:
            _promote(directory, partial, old)
    return directory


def export_trained(directory, params, model, tokenizer, model_name: str,
                   extra: dict[str, Any]) -> storage.Path:
    """Exports parameters, architecture and tokenizer so ``load_trained`` can rebuild them.
    ``extra`` (plain JSON: the training config, stage, step...) is recorded in ``model.json``."""
    info = {
        "model": model_name,
        "architecture": architecture_of(model),
        "tokenizer": tokenizer_info(tokenizer),
        **extra,
    }
    def save_tokenizer(folder: storage.Path) -> None:
        if info["tokenizer"]["kind"] == "saved":
            tokenizer.save(folder / TOKENIZER_DIR)

    return export_model(directory, params, info, write_extra=save_tokenizer)


def read_model_info(directory) -> dict[str, Any]:
    return json.loads((resolve_export(directory) / MODEL_FILE).read_text(encoding="utf-8"))


def model_fingerprint(directory) -> str:
    """The content fingerprint of an export: recorded in ``model.json`` at export time, or
    (for an export that predates it) a hash of every file in the folder."""
    info = read_model_info(directory)
    return info.get("fingerprint") or tree_digest(resolve_export(directory))


def restore_params(directory, abstract_params):
    with ocp.StandardCheckpointer() as checkpointer:
        return checkpointer.restore(resolve_export(directory) / PARAMS_DIR,
                                    abstract_params)


def load_trained(checkpoint_dir, *, compute_dtype: str = "float32", remat: bool = False):
    """(model, tokenizer) of an exported model, in a fresh process. ``compute_dtype`` only
    changes the arithmetic; parameters stay float32."""
    from calrec_core.model.gemma import Gemma3

    checkpoint_dir = resolve_export(checkpoint_dir)  # one folder for info, params, tokenizer
    info = read_model_info(checkpoint_dir)
    architecture = config_from(info["architecture"])
    abstract = nnx.eval_shape(lambda: Gemma3(architecture, rngs=nnx.Rngs(0),
                                             dtype=dtype_named(compute_dtype), remat=remat))
    graphdef, abstract_params = nnx.split(abstract, nnx.Param)
    device = jax.sharding.SingleDeviceSharding(jax.local_devices()[0])
    target = jax.tree.map(
        lambda leaf: jax.ShapeDtypeStruct(leaf.shape, leaf.dtype, sharding=device),
        nnx.to_pure_dict(abstract_params),
    )
    params = restore_params(checkpoint_dir, target)
    return nnx.merge(graphdef, params), load_tokenizer(checkpoint_dir, info)

"""Gemma 3 in Flax NNX: model, checkpoint loading, tokenizers, sharding and sampling."""

from calrec_core.model.config import Gemma3Config
from calrec_core.model.export import export_trained, load_trained, read_model_info
from calrec_core.model.gemma import Gemma3, KVCache, ModelOutput
from calrec_core.model.loading import load_pretrained
from calrec_core.model.sampler import Sample, generate, generate_texts
from calrec_core.model.sharding import (
    LOGICAL_AXIS_RULES,
    logical_to_sharding,
    logical_to_spec,
    make_mesh,
    shard_model,
)
from calrec_core.model.tokenizer import ByteTokenizer, Tokenizer, make_tiny_tokenizer

__all__ = [
    "LOGICAL_AXIS_RULES",
    "ByteTokenizer",
    "Gemma3",
    "Gemma3Config",
    "KVCache",
    "ModelOutput",
    "Sample",
    "Tokenizer",
    "export_trained",
    "load_pretrained",
    "load_trained",
    "read_model_info",
    "logical_to_sharding",
    "logical_to_spec",
    "generate",
    "generate_texts",
    "make_mesh",
    "make_tiny_tokenizer",
    "shard_model",
]

"""Gemma 3 in Flax NNX: model, checkpoint loading, tokenizers, sharding and decoding.

Names load on first use (PEP 562), so the ``calrec`` command starts without JAX.
"""

from calrec_core.lazy import lazy_exports

_EXPORTS = {
    "Gemma3Config": "calrec_core.model.config",
    "Sample": "calrec_core.model.decoding",
    "generate": "calrec_core.model.decoding",
    "generate_texts": "calrec_core.model.decoding",
    "export_trained": "calrec_core.model.export",
    "load_trained": "calrec_core.model.export",
    "read_model_info": "calrec_core.model.export",
    "Gemma3": "calrec_core.model.gemma",
    "KVCache": "calrec_core.model.gemma",
    "ModelOutput": "calrec_core.model.gemma",
    "load_pretrained": "calrec_core.model.loading",
    "LOGICAL_AXIS_RULES": "calrec_core.model.sharding",
    "logical_to_sharding": "calrec_core.model.sharding",
    "logical_to_spec": "calrec_core.model.sharding",
    "make_mesh": "calrec_core.model.sharding",
    "shard_model": "calrec_core.model.sharding",
    "ByteTokenizer": "calrec_core.model.tokenizer",
    "Tokenizer": "calrec_core.model.tokenizer",
    "make_tiny_tokenizer": "calrec_core.model.tokenizer",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)

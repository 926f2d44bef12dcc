"""Which network a run starts from: a random tiny Gemma 3 or the pretrained 270M weights.

The exported-model format (``export_trained``, ``load_trained``) lives in
``calrec_core.model.export``.
"""

from __future__ import annotations

from flax import nnx

from calrec_core.model.export import dtype_named
from calrec_core.train.config import TrainConfig

TINY_VOCAB = 512


def fresh_model(config: TrainConfig):
    """(model, tokenizer) to start from without a checkpoint: random tiny or pretrained Gemma."""
    from calrec_core.model.gemma import Gemma3

    if config.model == "tiny":
        from calrec_core.model.config import Gemma3Config
        from calrec_core.model.tokenizer import make_tiny_tokenizer

        tokenizer = make_tiny_tokenizer(TINY_VOCAB)
        model = Gemma3(Gemma3Config.tiny(vocab_size=TINY_VOCAB), rngs=nnx.Rngs(config.seed),
                       dtype=dtype_named(config.compute_dtype), remat=config.remat)
        return model, tokenizer
    from calrec_core.model import load_pretrained

    model, tokenizer = load_pretrained(dtype=dtype_named(config.compute_dtype))
    if config.remat:
        # Same parameters, layers rematerialised in the backward pass: rebuild around them.
        rebuilt = nnx.eval_shape(lambda: Gemma3(model.config, rngs=nnx.Rngs(0),
                                                dtype=dtype_named(config.compute_dtype),
                                                remat=True))
        nnx.update(rebuilt, nnx.state(model, nnx.Param))
        model = rebuilt
    return model, tokenizer

"""Sampling next-item texts from a decoder LM for the CALRec and GPT4Rec prompts.

The model side (``calrec_core.model.generate``) returns token ids and sequence
log-probabilities; this module builds the prompts (segment-wise, as in training), decodes
the samples and strips the stop tokens.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

from calrec_core.item_text import parse_item_text
from calrec_core.template import calrec_segments, encode_example, gpt4rec_segments

# Prompt template of each generative method; GPT4Rec prompts with titles only (Table 6).
TEMPLATES = {"calrec": calrec_segments, "gpt4rec": gpt4rec_segments}


@dataclasses.dataclass(frozen=True)
class Generation:
    """One sampled continuation."""

    text: str  # Decoded and stripped text.
    logprob: float  # Sequence log-probability under the sampling model.


def history_titles(history_texts: Sequence[str]) -> list[str]:
    """Titles for GPT4Rec's prompt; an unparsable text is used whole."""
    titles = []
    for text in history_texts:
        attributes = parse_item_text(text)
        titles.append(attributes.title if attributes is not None else text)
    return titles


def build_prompt(tokenizer, history_texts: Sequence[str], template: str, max_input_len: int):
    """Prompt token ids (BOS first) of one history for the named template."""
    if template not in TEMPLATES:
        raise ValueError(f"unknown prompt template {template!r}; choose from {sorted(TEMPLATES)}")
    history = history_titles(history_texts) if template == "gpt4rec" else list(history_texts)
    return encode_example(
        tokenizer.encode,
        history,
        None,
        bos_id=tokenizer.bos_id,
        eos_id=tokenizer.eos_id,
        max_input_len=max_input_len,
        segments_fn=TEMPLATES[template],
    ).prompt_ids


def default_mesh():
    """Data-parallel decoding over every local device; None on a single device."""
    import jax

    if jax.device_count() == 1:
        return None
    from calrec_core.model.sharding import make_mesh

    return make_mesh(data=-1)


class ItemGenerator:
    """Draws N_gen temperature samples per history from a model and its tokenizer.

    Samples are keyed by seed and prompt (see the model's generator), so they are the same on
    one device or many and however users are batched.
    """

    def __init__(self, model, tokenizer, config, mesh=None) -> None:
        self.model = model
        self.tokenizer = tokenizer
        self.config = config
        self.mesh = mesh if mesh is not None else default_mesh()

    def sample(
        self, histories: Sequence[Sequence[str]], template: str, seed: int
    ) -> list[list[Generation]]:
        from calrec_core.model.decoding import generate, prompt_buckets

        prompts = [
            build_prompt(self.tokenizer, h, template, self.config.prompt_budget) for h in histories
        ]
        outputs = generate(
            self.model,
            prompts,
            num_samples=self.config.n_gen,
            temperature=self.config.sampling_temperature,
            max_new_tokens=self.config.max_new_tokens,
            seed=seed,
            stop_ids=[self.tokenizer.eos_id],
            stop_at_newline=True,  # an item ends before "\n\nThe next item ..."
            tokenizer=self.tokenizer,
            batch_size=self.config.decode_batch_size,
            length_bucket=self.config.length_bucket,
            pad_id=getattr(self.tokenizer, "pad_id", 0),
            mesh=self.mesh,
            # One batch size and at most three prompt lengths: at most three decode programs
            # per evaluation, whatever its users (the last, smaller user batch included).
            prompt_lengths=prompt_buckets(self.config.prompt_budget, self.config.length_bucket),
            batch_prompts=self.config.user_batch_size,
        )
        return [[self._decode(sample) for sample in samples] for samples in outputs]

    def _decode(self, sample) -> Generation:
        ids = [int(t) for t in sample.token_ids if int(t) != self.tokenizer.eos_id]
        return Generation(text=self.tokenizer.decode(ids).strip(), logprob=float(sample.logprob))

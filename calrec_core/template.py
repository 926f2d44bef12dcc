"""Prompt templates: CALRec's (§3.2) and GPT4Rec's one-off suffix (Table 6).

A prompt is a list of text segments; ``encode_example`` tokenizes each segment on its own
and concatenates the ids. Segment-wise encoding makes the token sequence identical at
training and inference time and lets a too-long history lose its oldest items whole
while the template stays well formed.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable, Sequence

USER_PREFIX = "This is the summary of a user's purchase history."
FIRST_ITEM_PREFIX = " The first item bought is as follows."
NEXT_ITEM_PREFIX = "\n\nThe next item bought is as follows."

GPT4REC_PREFIX = "Previously, the customer has bought:"
GPT4REC_SUFFIX = " In the future, the customer wants to buy"

Encode = Callable[[str], list[int]]


def calrec_segments(history_texts: Sequence[str]) -> list[str]:
    """The CALRec prompt for a history, ending with the next-item prefix."""
    if not history_texts:
        raise ValueError("a CALRec prompt needs at least one history item")
    segments = [USER_PREFIX, FIRST_ITEM_PREFIX, " " + history_texts[0]]
    for text in history_texts[1:]:
        segments += [NEXT_ITEM_PREFIX, " " + text]
    segments.append(NEXT_ITEM_PREFIX)
    return segments


def gpt4rec_segments(history_titles: Sequence[str]) -> list[str]:
    """GPT4Rec's prompt: titles joined by '. ' and a one-off suffix."""
    if not history_titles:
        raise ValueError("a GPT4Rec prompt needs at least one history item")
    segments = [GPT4REC_PREFIX]
    segments += [" " + title.rstrip(" .") + "." for title in history_titles]
    segments.append(GPT4REC_SUFFIX)
    return segments


def target_segment(target_text: str) -> str:
    """The target continues the prompt after the final prefix, separated by a space."""
    return " " + target_text


@dataclasses.dataclass(frozen=True)
class EncodedExample:
    """Token ids of one history (and optionally its target)."""

    prompt_ids: list[int]  # BOS + history segments, ends with the next-item prefix.
    target_ids: list[int]  # Target item tokens + EOS; empty at inference.
    num_history_items: int  # Items kept after dropping the oldest to fit max_input_len.


def encode_example(
    encode: Encode,
    history_texts: Sequence[str],
    target_text: str | None,
    *,
    bos_id: int,
    eos_id: int,
    max_input_len: int = 1024,
    max_target_len: int = 80,
    segments_fn: Callable[[Sequence[str]], list[str]] = calrec_segments,
) -> EncodedExample:
    """Encodes history (+ target) dropping whole oldest items until the prompt fits.

    ``max_input_len`` bounds the prompt (BOS included); the target, EOS included, is cut
    to ``max_target_len`` tokens. At least one history item is always kept; if even one
    item does not fit, its tokens are cut from the left of the prompt body.
    """
    target_ids: list[int] = []
    if target_text is not None:
        target_ids = (encode(target_segment(target_text)) + [eos_id])[:max_target_len]
    # Encode every segment once; dropping the oldest item then re-encodes only the
    # prefix segments, whose text changes ("first" instead of "next").
    history = list(history_texts)
    cache: dict[str, list[int]] = {}

    def encode_cached(segment: str) -> list[int]:
        if segment not in cache:
            cache[segment] = encode(segment)
        return cache[segment]

    while True:
        ids = [bos_id]
        for segment in segments_fn(history):
            ids += encode_cached(segment)
        if len(ids) <= max_input_len or len(history) == 1:
            break
        history = history[1:]
    if len(ids) > max_input_len:
        ids = [bos_id] + ids[len(ids) - max_input_len + 1 :]
    return EncodedExample(prompt_ids=ids, target_ids=target_ids, num_history_items=len(history))

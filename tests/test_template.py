"""The CALRec prompt template (§3.2) and segment-wise encoding with whole-item truncation."""

import pytest

from calrec_core.template import (
    calrec_segments,
    encode_example,
    gpt4rec_segments,
)

ITEM_A = "Title: A. Category: C. Brand: B. Price: Unknown."
ITEM_B = "Title: Bee. Category: C. Brand: B. Price: $1.00."


def test_calrec_prompt_text_is_exactly_the_paper_template():
    text = "".join(calrec_segments([ITEM_A, ITEM_B]))
    assert text == (
        "This is the summary of a user's purchase history. The first item bought is as follows. "
        f"{ITEM_A}\n\nThe next item bought is as follows. {ITEM_B}"
        "\n\nThe next item bought is as follows."
    )


def test_gpt4rec_prompt_uses_titles_and_one_off_suffix():
    text = "".join(gpt4rec_segments(["Red pen", "Blue ink."]))
    assert text == (
        "Previously, the customer has bought: Red pen. Blue ink. "
        "In the future, the customer wants to buy"
    )


def char_encode(text):
    return [ord(c) for c in text]


def test_training_example_is_history_then_target_then_eos():
    example = encode_example(char_encode, [ITEM_A], ITEM_B, bos_id=-1, eos_id=-2)
    prompt = "".join(calrec_segments([ITEM_A]))
    assert example.prompt_ids == [-1] + char_encode(prompt)
    assert example.target_ids == char_encode(" " + ITEM_B) + [-2]
    assert example.num_history_items == 1


def test_too_long_history_drops_oldest_items_whole():
    history = [f"Title: item{i}. Category: c. Brand: b. Price: Unknown." for i in range(10)]
    full = encode_example(char_encode, history, None, bos_id=0, eos_id=1, max_input_len=10_000)
    cut = encode_example(char_encode, history, None, bos_id=0, eos_id=1, max_input_len=400)
    assert len(cut.prompt_ids) <= 400 < len(full.prompt_ids)
    kept = history[-cut.num_history_items :]
    # The kept history is re-rendered with the first-item prefix: still a well formed template.
    assert cut.prompt_ids == [0] + char_encode("".join(calrec_segments(kept)))
    assert cut.target_ids == []


def test_target_is_capped():
    example = encode_example(char_encode, [ITEM_A], ITEM_B * 5, bos_id=0, eos_id=1,
                             max_target_len=80)
    assert len(example.target_ids) == 80


def test_empty_history_is_an_error():
    with pytest.raises(ValueError, match="at least one history item"):
        encode_example(char_encode, [], ITEM_B, bos_id=0, eos_id=1)

"""The rankings beyond the sampler: catalog-constrained decoding and likelihood reranking.

Scores are checked against an independent reference: one plain forward pass (no KV cache, no
batching) over prompt + item tokens, whose float32 log-softmax is summed over the item's tokens.
"""

from __future__ import annotations

import dataclasses
import itertools

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd
import pytest
from flax import nnx

from calrec_core.eval import EvalConfig, build_catalog, run_evaluation
from calrec_core.eval.constrained import constrained_generations, decode_items
from calrec_core.eval.generation import ItemGenerator, build_prompt
from calrec_core.eval.likelihood import item_token_ids
from calrec_core.eval.recommend import recommend_with_details
from calrec_core.eval.rerank import text_scores
from calrec_core.eval.tiers import pool_rows, tiered_scores
from calrec_core.eval.trie import build_trie, catalog_trie
from calrec_core.item_text import format_item, make_attributes

NAMES = ["pen", "pencil", "pens", "stapler", "staples", "paper", "paperclip", "desk", "desk lamp",
         "ink", "inkjet", "ruler"]
TEXTS = {f"A{i}": format_item(make_attributes(f"item {name}", "Office", "Acme", f"${i}.00"))
         for i, name in enumerate(NAMES)}
TEXTS["DUP"] = TEXTS["A0"]  # two asins, one text: one trie item, always tied


@pytest.fixture(scope="module")
def tiny_model():
    from calrec_core.model.config import Gemma3Config
    from calrec_core.model.gemma import Gemma3
    from calrec_core.model.tokenizer import make_tiny_tokenizer

    return Gemma3(Gemma3Config.tiny(vocab_size=512), rngs=nnx.Rngs(3)), make_tiny_tokenizer(512)


@pytest.fixture(scope="module")
def catalog():
    return build_catalog(list(TEXTS), list(TEXTS.values()), "Office")


@nnx.jit
def _full_forward(model, tokens, mask):
    positions = jnp.arange(tokens.shape[1], dtype=jnp.int32)[None]  # (1, T)
    out = model(tokens, positions, mask, logits_at=positions)
    return jax.nn.log_softmax(out.logits[0].astype(jnp.float32), axis=-1)  # (T, V)


def reference_logprob(model, prompt, item_ids) -> float:
    """Sum of log p(item token) from one full forward pass over prompt + item, no cache (right
    padding to a fixed length, which a causal model never attends from earlier tokens)."""
    sequence = list(prompt) + list(item_ids)
    width = -(-len(sequence) // 256) * 256
    tokens = np.zeros((1, width), np.int32)  # (1, T)
    tokens[0, : len(sequence)] = sequence
    mask = np.arange(width)[None] < len(sequence)
    logprobs = np.asarray(_full_forward(model, jnp.asarray(tokens), jnp.asarray(mask)))
    start = len(prompt)
    return float(sum(logprobs[start - 1 + j, t] for j, t in enumerate(item_ids)))


def test_trie_holds_exactly_the_item_sequences_and_bans_per_user():
    sequences = [[5, 6, 1], [5, 7, 1], [5, 6, 8, 1], [9, 1], [5, 7, 1]]
    trie = build_trie(sequences)

    def paths(node=0, prefix=()):
        if trie.is_terminal(node):
            yield prefix, tuple(trie.rows(node))
        for token, child in zip(*trie.children(node), strict=True):
            yield from paths(int(child), (*prefix, int(token)))

    found = dict(paths())
    assert found == {(5, 6, 1): (0,), (5, 7, 1): (1, 4), (5, 6, 8, 1): (2,), (9, 1): (3,)}
    assert trie.leaf_count[0] == 4 and trie.depth == 4
    assert trie.walk([5, 6]) is not None and trie.walk([5, 9]) is None
    banned = trie.banned_counts([[5, 7, 1], [5, 7, 1], [4, 4]])  # repeats and non-items ignored
    assert banned[0] == 1 and banned[trie.walk([5])[-1]] == 1
    assert list(trie.children(0)[0]) == [5, 9]  # ascending tokens


def test_catalog_trie_is_built_once_per_catalog(tiny_model, catalog):
    _, tokenizer = tiny_model
    assert catalog_trie(catalog, tokenizer) is catalog_trie(catalog, tokenizer)


@pytest.mark.parametrize("mode", ["beam", "sample"])
def test_constrained_generations_are_catalog_items_never_history_with_exact_logprobs(
        tiny_model, catalog, mode):
    model, tokenizer = tiny_model
    config = dataclasses.replace(EvalConfig.tiny(), constrained_decoding=mode, beam_width=5,
                                 n_gen=6, sampling_temperature=2.0)
    generator = ItemGenerator(model, tokenizer, config)
    texts = set(TEXTS.values())
    for history in (["A0", "A3"], ["A5", "A9", "A10"], ["A11"]):
        history_texts = [TEXTS[a] for a in history]
        items, generations = constrained_generations(generator, catalog, history_texts, config)
        assert items and len(items) == len({g.node for g in items})
        assert (len(items) == 5) if mode == "beam" else (1 <= len(items) <= 6)
        prompt = build_prompt(tokenizer, history_texts, "calrec", config.prompt_budget)
        for generation in generations:
            assert generation.text in texts and generation.text not in history_texts
            (ids,) = item_token_ids(tokenizer, [generation.text])
            assert generation.logprob == pytest.approx(
                reference_logprob(model, prompt, ids), abs=2e-4, rel=2e-5)
        assert [g.logprob for g in generations] == sorted((g.logprob for g in generations),
                                                          reverse=True)
    # Without the ban, the history items are generated like any other.
    trie = catalog_trie(catalog, tokenizer)
    open_items = decode_items(model, tokenizer, trie, prompt, dataclasses.replace(
        config, constrained_decoding="beam", beam_width=int(trie.leaf_count[0])))
    assert len(open_items) == trie.leaf_count[0]  # a beam as wide as the catalog finds it all


def test_beam_search_finds_the_most_likely_items_of_a_small_catalog(tiny_model, catalog):
    """With the beam as wide as the catalog, its top items are the exact top of the catalog."""
    model, tokenizer = tiny_model
    trie = catalog_trie(catalog, tokenizer)
    config = dataclasses.replace(EvalConfig.tiny(), beam_width=int(trie.leaf_count[0]))
    prompt = build_prompt(tokenizer, [TEXTS["A7"]], "calrec", config.prompt_budget)
    items = decode_items(model, tokenizer, trie, prompt, config)
    distinct = list(dict.fromkeys(TEXTS.values()))
    exact = {text: reference_logprob(model, prompt, ids)
             for text, ids in zip(distinct, item_token_ids(tokenizer, distinct), strict=True)}
    decoded = {catalog.texts[int(trie.rows(g.node)[0])]: g.logprob for g in items}
    assert set(decoded) == set(exact)
    for text, value in decoded.items():
        assert value == pytest.approx(exact[text], abs=2e-4, rel=2e-5)


@pytest.mark.parametrize("length_norm", [False, True])
def test_rerank_scores_equal_a_full_forward_pass(tiny_model, length_norm):
    model, tokenizer = tiny_model
    config = dataclasses.replace(EvalConfig.tiny(), rerank_length_norm=length_norm,
                                 rerank_batch_size=3)  # several batches, a padded last one
    prompt = build_prompt(tokenizer, [TEXTS["A1"], TEXTS["A2"]], "calrec", config.prompt_budget)
    texts = [TEXTS[a] for a in ("A3", "A8", "A0", "A5", "A3", "A9", "A11")]
    scores = text_scores(model, tokenizer, prompt, texts, config)
    for text, score in zip(texts, scores, strict=True):
        (ids,) = item_token_ids(tokenizer, [text])
        expected = reference_logprob(model, prompt, ids) / (len(ids) if length_norm else 1)
        assert score == pytest.approx(expected, abs=2e-4, rel=2e-5)
    assert scores[0] == scores[4]  # the same text scores the same, bit for bit


def test_equal_scores_stay_ties_and_pools_never_split_a_tie():
    rest = np.array([0.5, 0.5, 0.1, 0.9, 0.0, 0.5])
    scores = tiered_scores(np.array([4, 2, 0]), np.array([-1.0, -1.0, -3.0]), rest)
    assert scores[4] == scores[2] > scores[0] > scores[3] > scores[1] == scores[5]
    lifted = tiered_scores(np.array([1, 1]), np.array([np.nan, -2.0]), rest)  # NaN ignored
    assert lifted[1] > np.delete(lifted, 1).max()
    values = np.array([3.0, 2.0, 2.0, 2.0, 1.0, 0.0, 0.0])
    assert list(pool_rows(values, 2)) == [0, 1, 2, 3]  # the tie at the cut comes whole
    assert list(pool_rows(values, 1)) == [0]  # 4 items for a pool of 1: the tie stays out
    assert list(pool_rows(np.zeros(5), 3)) == []  # no evidence, no pool


def test_both_rankings_rank_the_full_catalog_in_an_evaluation(tiny_model, tmp_path,
                                                               dataset_writer):
    model, tokenizer = tiny_model
    users = [("u1", ["A0", "A1", "A2"]), ("u2", ["A3", "A4"]), ("u3", ["A9", "A10"]),
             ("u4", ["A7"])]
    test = [{"user_id": u, "category": "Office", "asins": a, "texts": [TEXTS[x] for x in a],
             "timestamps": list(range(len(a)))} for u, a in users]
    data = dataset_writer(tmp_path / "data", "Office", TEXTS, {"test": test})
    config = dataclasses.replace(EvalConfig.tiny(), beam_width=4, rerank_pool=3,
                                 sampling_temperature=1.5)
    methods = ["calrec", "calrec_constrained", "calrec_rerank", "lir"]
    result = run_evaluation(data, "Office", tmp_path / "out", methods=methods, config=config,
                            model_and_tokenizer=(model, tokenizer), show_progress=False)
    predictions = pd.read_parquet(tmp_path / "out" / "predictions.parquet")
    for method in ("calrec_constrained", "calrec_rerank"):
        metrics = result["methods"][method]
        assert metrics["num_users"] == 4 and 0 <= metrics["nohist_ndcg@10_pes"] <= 1
        rows = predictions[predictions["method"] == method].set_index("user_id")
        for user, _ in users:
            top = list(rows.loc[user, "top_asins"])
            assert len(top) == config.top_k and len(set(top)) == len(top)
            if user == "u4":  # one item, no history: nothing to condition on, all tied
                assert rows.loc[user, "all_scores_tied"]
    constrained = predictions[predictions["method"] == "calrec_constrained"]
    for _, row in constrained.iterrows():
        history = {TEXTS[a] for a in dict(users)[row["user_id"]][:-1]}
        assert not history & set(row["generations"])
        # The generated items lead the ranking, best log-probability first.
        assert list(row["top_texts"][: len(row["generations"])]) == list(row["generations"])


def test_copies_of_one_text_tie_under_both_rankings(tiny_model, catalog):
    from calrec_core.eval.scoring import model_ranking_scores

    model, tokenizer = tiny_model
    config = dataclasses.replace(EvalConfig.tiny(), beam_width=len(NAMES), rerank_pool=len(TEXTS))
    generator = ItemGenerator(model, tokenizer, config)
    history = [TEXTS["A5"], TEXTS["A6"]]
    samples = generator.sample([history], "calrec", config.seed)[0]
    first, copy = catalog.position["A0"], catalog.position["DUP"]
    for method in ("calrec_constrained", "calrec_rerank"):
        scores, _, _ = model_ranking_scores(method, generator, catalog, history, samples, config)
        assert scores[first] == scores[copy]
        # Every other pair of items differs (distinct texts, distinct log-probabilities).
        others = np.delete(scores, copy)
        assert len(np.unique(others[scores[np.arange(len(scores)) != copy] > 0])) >= 2


def test_recommend_names_the_decoded_items(tiny_model, catalog):
    model, tokenizer = tiny_model
    config = dataclasses.replace(EvalConfig.tiny(), beam_width=3)
    generator = ItemGenerator(model, tokenizer, config)
    for method in ("calrec_constrained", "calrec_rerank"):
        result = recommend_with_details(catalog, ["A3", "A4"], method=method,
                                        generator=generator, config=config, k=5)
        assert len(result["items"]) == 5
        if method == "calrec_constrained":
            assert len(result["generations"]) == 3
            assert [i["text"] for i in result["items"][:3]] == result["generations"]
            assert not any(i["in_history"] for i in result["items"][:3])


@pytest.mark.gemma
def test_real_gemma_scores_equal_a_full_forward_pass(gift_cards_dir):
    from calrec_core.data import read_examples
    from calrec_core.eval.catalog import load_catalog
    from calrec_core.model import load_pretrained

    model, tokenizer = load_pretrained()
    config = dataclasses.replace(EvalConfig.tiny(), beam_width=3, max_input_len=256,
                                 rerank_batch_size=4)
    catalog = load_catalog(gift_cards_dir, "Gift_Cards", config)
    example = read_examples(gift_cards_dir, "Gift_Cards", "test")[0]
    history = list(example["texts"][:-1])
    prompt = build_prompt(tokenizer, history, "calrec", config.prompt_budget)
    _, generations = constrained_generations(ItemGenerator(model, tokenizer, config), catalog,
                                             history, config)
    assert len(generations) == 3
    summed = dataclasses.replace(config, rerank_length_norm=False)
    texts = [g.text for g in generations] + list(itertools.islice(catalog.texts, 2))
    reranked = text_scores(model, tokenizer, prompt, texts, summed)
    for index, text in enumerate(texts):
        assert text in set(catalog.texts)
        if index < len(generations):
            assert text not in history
        (ids,) = item_token_ids(tokenizer, [text])
        exact = reference_logprob(model, prompt, ids)
        assert reranked[index] == pytest.approx(exact, abs=2e-3, rel=1e-4)
        if index < len(generations):
            assert generations[index].logprob == pytest.approx(exact, abs=2e-3, rel=1e-4)

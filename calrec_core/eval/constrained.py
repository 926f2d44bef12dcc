"""Catalog-constrained decoding: the model may only write catalog item texts.

Decoding follows the catalog's token trie (``trie.py``), so every generation is exactly one
catalog item (optionally never one of the user's own history items: their terminals are closed
for that user). Two modes (``EvalConfig.constrained_decoding``):

  beam    beam search of width B: all expansions of the live beams are ranked by sequence
          log-probability and the best B kept; an expansion that ends an item is finished. It
          stops once B items are finished and no live beam scores above the B-th (a
          continuation only lowers a score), or when nothing is left to extend.
  sample  N_gen rows sampled at the sampling temperature, each restricted to the open
          children of its node (renormalised); repeats of an item are merged.

A generation's ``logprob`` is the model's own (temperature 1, unrestricted) log-probability of
the item's tokens, so it equals the sum of token log-probs of a plain forward pass over that
text. The ranking (``constrained_scores``): the generated items by that log-probability, then
every other item by the fusion of the generations (Algorithm 1 on them) or by LIR.
Ties between equal log-probabilities are kept as ties (``tiers.tiered_scores``), and beam
candidates of equal score are ordered by (beam, token), never at random.
"""

from __future__ import annotations

import dataclasses
import zlib
from collections.abc import Sequence

import numpy as np

from calrec_core.eval.catalog import Catalog
from calrec_core.eval.config import EvalConfig
from calrec_core.eval.fusion import quasi_round_robin
from calrec_core.eval.generation import Generation, build_prompt
from calrec_core.eval.likelihood import extend, item_token_ids, prefill
from calrec_core.eval.tiers import tiered_scores
from calrec_core.eval.trie import TokenTrie, catalog_trie


@dataclasses.dataclass(frozen=True)
class ItemGeneration:
    """One generated catalog item."""

    node: int  # Its terminal node in the trie.
    logprob: float  # Sum of the model's log p(token) over the item's tokens (EOS included).


def _bucket(n: int) -> int:
    return max(8, 1 << (max(n, 1) - 1).bit_length())  # few distinct shapes to compile


def _open_children(trie: TokenTrie, node: int, banned: dict[int, int]):
    tokens, nodes = trie.children(node)
    if not banned:
        return tokens, nodes
    alive = trie.leaf_count[nodes] > np.asarray([banned.get(int(n), 0) for n in nodes])
    return tokens[alive], nodes[alive]


def _step_choices(trie, nodes, banned, rows):
    """Per row: its open (tokens, nodes) and a padded (rows, K) token matrix for ``extend``."""
    options = [_open_children(trie, n, banned) for n in nodes]
    width = _bucket(max((len(t) for t, _ in options), default=1))
    choices = np.zeros((rows, width), np.int32)
    for row, (tokens, _) in enumerate(options):
        choices[row, : len(tokens)] = tokens
    return options, choices


def decode_items(model, tokenizer, trie: TokenTrie, prompt: Sequence[int], config: EvalConfig,
                 *, banned: dict[int, int] | None = None) -> list[ItemGeneration]:
    """Catalog items generated after ``prompt`` (beam search or constrained sampling, per
    ``config``), best log-probability first."""
    banned = banned or {}
    if trie.leaf_count[0] - banned.get(0, 0) <= 0:
        return []
    sampling = config.constrained_decoding == "sample"
    rows = config.n_gen if sampling else config.beam_width
    pad_id = getattr(tokenizer, "pad_id", 0)
    prefix = prefill(model, prompt, rows=rows, room=trie.depth,
                     length_bucket=config.length_bucket, pad_id=pad_id)
    root_tokens, root_nodes = _open_children(trie, 0, banned)
    first = prefix.first_logprobs[root_tokens]
    if sampling:
        return _sample(model, trie, prefix, banned, config, root_tokens, root_nodes, first,
                       prompt)
    return _beam(model, trie, prefix, banned, config, root_tokens, root_nodes, first)


def _beam(model, trie, prefix, banned, config, root_tokens, root_nodes, first):
    width = config.beam_width
    finished: list[ItemGeneration] = []
    # Expansions: (score, beam, token, node); the root's come from the prefill.
    expansions = [(float(s), 0, int(t), int(n))
                  for s, t, n in zip(first, root_tokens, root_nodes, strict=True)]
    cache, position = prefix.cache, prefix.prompt_len
    while expansions:
        expansions.sort(key=lambda e: (-e[0], e[1], e[2]))  # ties: beam, then token order
        live = []
        for expansion in expansions[:width]:
            if trie.is_terminal(expansion[3]):
                finished.append(ItemGeneration(expansion[3], expansion[0]))
            if len(trie.children(expansion[3])[0]):
                live.append(expansion)
        finished.sort(key=lambda g: (-g.logprob, g.node))
        if not live or (len(finished) >= width
                        and max(e[0] for e in live) <= finished[width - 1].logprob):
            break
        parents = [e[1] for e in live] + [0] * (width - len(live))
        tokens = [e[2] for e in live] + [0] * (width - len(live))
        nodes = [e[3] for e in live]
        options, choices = _step_choices(trie, nodes, banned, width)
        cache, picked = extend(model, cache, parents, tokens, position, choices)
        position += 1
        expansions = [(live[r][0] + float(picked[r, k]), r, int(token), int(node))
                      for r, (tokens_r, nodes_r) in enumerate(options)
                      for k, (token, node) in enumerate(zip(tokens_r, nodes_r, strict=True))]
    return finished[:width]


def _sample(model, trie, prefix, banned, config, root_tokens, root_nodes, first, prompt):
    rows = config.n_gen
    temperature = max(config.sampling_temperature, 1e-6)
    # Keyed by seed and prompt content, like the sampler: the same user draws the same items.
    rng = np.random.default_rng([config.seed, zlib.crc32(np.asarray(prompt, np.int32).tobytes())])

    def draw(logprobs):
        if config.sampling_temperature == 0:
            return int(np.argmax(logprobs))
        weights = np.exp((logprobs - logprobs.max()) / temperature)
        return int(rng.choice(len(weights), p=weights / weights.sum()))

    state = []  # per live row: (score, token, node)
    for _ in range(rows):
        k = draw(first)
        state.append((float(first[k]), int(root_tokens[k]), int(root_nodes[k])))
    best: dict[int, float] = {}
    parents = list(range(rows))
    cache, position = prefix.cache, prefix.prompt_len
    while True:
        live = []
        for row, (score, token, node) in enumerate(state):
            if trie.is_terminal(node):
                best[node] = max(best.get(node, -np.inf), score)
            if len(trie.children(node)[0]):
                live.append((parents[row], score, token, node))
        if not live:
            break
        parents = [p for p, *_ in live] + [0] * (rows - len(live))
        tokens = [t for _, _, t, _ in live] + [0] * (rows - len(live))
        options, choices = _step_choices(trie, [n for *_, n in live], banned, rows)
        cache, picked = extend(model, cache, parents, tokens, position, choices)
        position += 1
        state, parents = [], []
        for r, ((tokens_r, nodes_r), (_, score, _, _)) in enumerate(zip(options, live,
                                                                         strict=True)):
            k = draw(picked[r, : len(tokens_r)])
            state.append((score + float(picked[r, k]), int(tokens_r[k]), int(nodes_r[k])))
            parents.append(r)
    generated = [ItemGeneration(node, score) for node, score in best.items()]
    return sorted(generated, key=lambda g: (-g.logprob, g.node))


def constrained_generations(generator, catalog: Catalog, history_texts: Sequence[str],
                            config: EvalConfig) -> tuple[list[ItemGeneration], list[Generation]]:
    """The items decoded for one history (none without history), as trie terminals and as
    (text, logprob) generations, best first."""
    if not history_texts:
        return [], []
    tokenizer = generator.tokenizer
    trie = catalog_trie(catalog, tokenizer)
    banned = (trie.banned_counts(item_token_ids(tokenizer, history_texts))
              if config.constrained_ban_history else {})
    prompt = build_prompt(tokenizer, history_texts, "calrec", config.prompt_budget)
    items = decode_items(generator.model, tokenizer, trie, prompt, config, banned=banned)
    texts = [Generation(catalog.texts[int(trie.rows(g.node)[0])], g.logprob) for g in items]
    return items, texts


def constrained_scores(catalog: Catalog, trie: TokenTrie, items: Sequence[ItemGeneration],
                       generations: Sequence[Generation], rest: np.ndarray | None,
                       config: EvalConfig) -> np.ndarray:
    """(N_c,) scores: the generated items above all others by log-probability, the rest by
    ``rest`` (LIR scores) or, when None, by the fusion of the generations."""
    if rest is None:
        rest = quasi_round_robin(catalog.index, [g.text for g in generations],
                                 [g.logprob for g in generations],
                                 n_preds=max(1, len(generations)), epsilon=config.epsilon)
    rows = [trie.rows(g.node) for g in items]
    values = [np.full(len(r), g.logprob) for r, g in zip(rows, items, strict=True)]
    if not rows:
        return tiered_scores(np.zeros(0, np.int64), np.zeros(0), rest)
    return tiered_scores(np.concatenate(rows), np.concatenate(values), rest)

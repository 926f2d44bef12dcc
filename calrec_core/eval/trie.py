"""A token trie of a catalog's item texts, the sequences the model was trained to generate.

Each distinct item text contributes its training target ids (``likelihood.item_token_ids``:
" " + text, then EOS), so a path from the root to a terminal node is exactly one item text;
catalog rows sharing a text share its terminal (their scores then tie, as they must).

The trie is flat numpy (CSR), a few bytes per node: node n's children are
``child_tokens[child_start[n]:child_start[n + 1]]`` (ascending) leading to the nodes at the same
places of ``child_nodes``. Node 0 is the root; nodes are numbered in depth-first order.
"""

from __future__ import annotations

import dataclasses
import weakref
from collections.abc import Sequence

import numpy as np


@dataclasses.dataclass(frozen=True)
class TokenTrie:
    """Item token sequences sharing their prefixes (module docstring)."""

    child_start: np.ndarray  # (num_nodes + 1,) int64 offsets into child_tokens/child_nodes.
    child_tokens: np.ndarray  # (num_nodes - 1,) int32 edge tokens, ascending per parent.
    child_nodes: np.ndarray  # (num_nodes - 1,) int32 the node each edge leads to.
    terminal_start: np.ndarray  # (num_nodes + 1,) int64 offsets into terminal_rows.
    terminal_rows: np.ndarray  # (N_c,) int32 catalog rows grouped by the node ending their text.
    leaf_count: np.ndarray  # (num_nodes,) int32 terminals at or below each node.
    depth: int  # Tokens of the longest item sequence.

    @property
    def num_nodes(self) -> int:
        return int(self.leaf_count.shape[0])

    @property
    def nbytes(self) -> int:
        return sum(getattr(self, f.name).nbytes for f in dataclasses.fields(self)
                   if isinstance(getattr(self, f.name), np.ndarray))

    def children(self, node: int) -> tuple[np.ndarray, np.ndarray]:
        """(tokens, nodes) of the edges out of ``node``, tokens ascending."""
        start, end = self.child_start[node], self.child_start[node + 1]
        return self.child_tokens[start:end], self.child_nodes[start:end]

    def rows(self, node: int) -> np.ndarray:
        """Catalog rows whose text ends at ``node`` (empty when it ends none)."""
        return self.terminal_rows[self.terminal_start[node] : self.terminal_start[node + 1]]

    def is_terminal(self, node: int) -> bool:
        return bool(self.terminal_start[node + 1] > self.terminal_start[node])

    def walk(self, tokens: Sequence[int]) -> list[int] | None:
        """The nodes along ``tokens`` from the root (root first), or None if it leaves the trie."""
        path = [0]
        for token in tokens:
            edge_tokens, nodes = self.children(path[-1])
            at = int(np.searchsorted(edge_tokens, token))
            if at == len(edge_tokens) or edge_tokens[at] != token:
                return None
            path.append(int(nodes[at]))
        return path

    def banned_counts(self, sequences: Sequence[Sequence[int]]) -> dict[int, int]:
        """{node: terminals below it that are banned} for the items of ``sequences`` (e.g. a
        user's history); a sequence that is no catalog item is ignored. A node is still open
        while ``leaf_count[node] - banned[node] > 0``."""
        banned: dict[int, int] = {}
        seen: set[int] = set()
        for sequence in sequences:
            path = self.walk(sequence)
            if path is None or not self.is_terminal(path[-1]) or path[-1] in seen:
                continue
            seen.add(path[-1])
            for node in path:
                banned[node] = banned.get(node, 0) + 1
        return banned


def build_trie(sequences: Sequence[Sequence[int]]) -> TokenTrie:
    """The trie of one token sequence per catalog row (row order = ``sequences`` order)."""
    if not sequences:
        raise ValueError("a token trie needs at least one sequence")
    if any(len(s) == 0 for s in sequences):
        raise ValueError("every item needs at least one token")
    rows_of: dict[tuple[int, ...], list[int]] = {}
    for row, sequence in enumerate(sequences):
        rows_of.setdefault(tuple(int(t) for t in sequence), []).append(row)
    ordered = sorted(rows_of)  # lexicographic: shared prefixes are adjacent
    parents: list[int] = []
    tokens: list[int] = []
    node_depth = [0]
    terminal_of: dict[int, list[int]] = {}
    path = [0]  # nodes of the previous sequence's prefixes, root first
    previous: tuple[int, ...] = ()
    for sequence in ordered:
        common = 0
        limit = min(len(sequence), len(previous))
        while common < limit and sequence[common] == previous[common]:
            common += 1
        del path[common + 1 :]
        for depth in range(common, len(sequence)):
            parents.append(path[-1])
            tokens.append(sequence[depth])
            path.append(len(node_depth))
            node_depth.append(depth + 1)
        terminal_of[path[len(sequence)]] = rows_of[sequence]
        previous = sequence
    num_nodes = len(node_depth)
    parent = np.asarray(parents, np.int64)
    child = np.arange(1, num_nodes, dtype=np.int64)  # edge e creates node e + 1
    order = np.argsort(parent, kind="stable")  # tokens stay ascending within a parent
    child_start = np.zeros(num_nodes + 1, np.int64)
    np.add.at(child_start, parent + 1, 1)
    terminal_start = np.zeros(num_nodes + 1, np.int64)
    for node, rows in terminal_of.items():
        terminal_start[node + 1] = len(rows)
    terminal_rows = np.asarray([row for node in sorted(terminal_of) for row in terminal_of[node]],
                               np.int32)
    leaf_count = np.zeros(num_nodes, np.int64)
    leaf_count[list(terminal_of)] = 1
    depths = np.asarray(node_depth, np.int64)
    for depth in range(int(depths.max()), 0, -1):  # children before their parents
        edges = depths[child] == depth
        np.add.at(leaf_count, parent[edges], leaf_count[child[edges]])
    return TokenTrie(
        child_start=np.cumsum(child_start),
        child_tokens=np.asarray(tokens, np.int32)[order],
        child_nodes=child[order].astype(np.int32),
        terminal_start=np.cumsum(terminal_start),
        terminal_rows=terminal_rows,
        leaf_count=leaf_count.astype(np.int32),
        depth=int(depths.max()),
    )


_TRIES: dict[tuple[int, int], tuple[weakref.ref, weakref.ref, TokenTrie]] = {}


def catalog_trie(catalog, tokenizer) -> TokenTrie:
    """The trie of ``catalog``'s item texts under ``tokenizer``, built once per pair (kept while
    both live)."""
    from calrec_core.eval.likelihood import item_token_ids

    key = (id(catalog), id(tokenizer))
    held = _TRIES.get(key)
    if held is not None and held[0]() is catalog and held[1]() is tokenizer:
        return held[2]
    for stale in [k for k, (c, t, _) in _TRIES.items() if c() is None or t() is None]:
        del _TRIES[stale]
    trie = build_trie(item_token_ids(tokenizer, catalog.texts))
    _TRIES[key] = (weakref.ref(catalog), weakref.ref(tokenizer), trie)
    return trie

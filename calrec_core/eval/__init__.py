"""Evaluation: sampling + quasi-round-robin BM25 fusion, hierarchical matching, tie-aware
metrics, baselines (LIR, pretrained, GPT4Rec template) and reports (CALRec §3.5, §4-§6).

Importing this package pulls in numpy/scipy only; models load inside the functions that
need them.
"""

from calrec_core.eval.bm25 import BM25Index, tokenize
from calrec_core.eval.catalog import Catalog, build_catalog, load_catalog
from calrec_core.eval.config import EvalConfig
from calrec_core.eval.evaluate import EvalResult, evaluate_split, run_evaluation, summarize
from calrec_core.eval.fusion import fuse_scores, quasi_round_robin, select_samples
from calrec_core.eval.hierarchical import HierarchicalMatcher, MatchCounts
from calrec_core.eval.metrics import paired_t_test, target_ranks, user_metrics
from calrec_core.eval.recommend import recommend
from calrec_core.eval.report import write_report
from calrec_core.eval.scoring import METHODS

__all__ = [
    "METHODS",
    "BM25Index",
    "Catalog",
    "EvalConfig",
    "EvalResult",
    "HierarchicalMatcher",
    "MatchCounts",
    "build_catalog",
    "evaluate_split",
    "fuse_scores",
    "load_catalog",
    "paired_t_test",
    "quasi_round_robin",
    "recommend",
    "run_evaluation",
    "select_samples",
    "summarize",
    "target_ranks",
    "tokenize",
    "user_metrics",
    "write_report",
]

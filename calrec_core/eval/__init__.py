"""Evaluation: sampling + quasi-round-robin BM25 fusion, hierarchical matching, tie-aware
metrics, baselines (LIR, pretrained, GPT4Rec template) and reports (CALRec §3.5, §4-§6).

Names load on first use (PEP 562), so ``EvalConfig`` imports without scipy or the model;
models load inside the functions that need them.
"""

from calrec_core.lazy import lazy_exports

_EXPORTS = {
    "BM25Index": "calrec_core.eval.bm25",
    "tokenize": "calrec_core.eval.bm25",
    "Catalog": "calrec_core.eval.catalog",
    "build_catalog": "calrec_core.eval.catalog",
    "load_catalog": "calrec_core.eval.catalog",
    "EvalConfig": "calrec_core.eval.config",
    "EvalResult": "calrec_core.eval.evaluate",
    "evaluate_split": "calrec_core.eval.evaluate",
    "run_evaluation": "calrec_core.eval.evaluate",
    "summarize": "calrec_core.eval.evaluate",
    "fuse_scores": "calrec_core.eval.fusion",
    "quasi_round_robin": "calrec_core.eval.fusion",
    "select_samples": "calrec_core.eval.fusion",
    "HierarchicalMatcher": "calrec_core.eval.hierarchical",
    "MatchCounts": "calrec_core.eval.hierarchical",
    "paired_t_test": "calrec_core.eval.metrics",
    "target_ranks": "calrec_core.eval.metrics",
    "user_metrics": "calrec_core.eval.metrics",
    "recommend": "calrec_core.eval.recommend",
    "write_report": "calrec_core.eval.report",
    "METHODS": "calrec_core.eval.scoring",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)

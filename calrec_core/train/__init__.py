"""CALRec training: the two-tower objective (Eqs. 1-4), Stage I and Stage II, sharded and
resumable. Names load on first use (PEP 562): ``TrainConfig`` imports without JAX, so a client
that only builds configurations (the pipeline compiler) needs no accelerator stack.

Choices the paper leaves open, made once here:
- Pooling: v^T and v^TU average the same target token ids (EOS included, BOS never);
  v^U averages the prompt (template and history) without BOS. Padding never enters.
- L_NIG is the mean cross-entropy per target token ("token_mean"); Eq. 1's per-user sum is
  ``nig_reduction="sequence_sum"``.
- With ``microbatches > 1`` the step runs in two passes (GradCache-style), so the contrastive
  losses still use every user of the step as an in-batch negative, as with one microbatch.
"""

from calrec_core.lazy import lazy_exports

_EXPORTS = {
    "TrainConfig": "calrec_core.train.config",
    "StageResult": "calrec_core.train.stages",
    "run_stage1": "calrec_core.train.stages",
    "run_stage2": "calrec_core.train.stages",
    "calrec_loss": "calrec_core.train.losses",
    "contrastive_loss": "calrec_core.train.losses",
    "cosine_similarity_matrix": "calrec_core.train.losses",
    "masked_mean": "calrec_core.train.losses",
    "nig_loss": "calrec_core.train.losses",
    "plot_losses": "calrec_core.train.metrics",
    "read_metrics": "calrec_core.train.metrics",
    "load_trained": "calrec_core.model.export",
}

__getattr__, __all__ = lazy_exports(__name__, _EXPORTS)

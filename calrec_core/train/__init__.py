"""CALRec training: the two-tower objective (Eqs. 1-4), Stage I and Stage II, sharded and
resumable. Importing this package imports JAX; the ``calrec train`` CLI imports it lazily.

Choices the paper leaves open, made once here:
- Pooling: v^T and v^TU average the same target token ids (EOS included, BOS never);
  v^U averages the prompt (template and history) without BOS. Padding never enters.
- L_NIG is the mean cross-entropy per target token ("token_mean"); Eq. 1's per-user sum is
  ``nig_reduction="sequence_sum"``.
- With ``microbatches > 1`` each microbatch is its own pool of in-batch negatives; the
  paper's 512 negatives need ``microbatches=1`` (data-parallel devices instead).
"""

from calrec_core.model.export import load_trained
from calrec_core.train.config import TrainConfig
from calrec_core.train.losses import (
    calrec_loss,
    contrastive_loss,
    cosine_similarity_matrix,
    masked_mean,
    nig_loss,
)
from calrec_core.train.metrics import plot_losses, read_metrics
from calrec_core.train.stages import StageResult, run_stage1, run_stage2

__all__ = [
    "StageResult",
    "TrainConfig",
    "calrec_loss",
    "contrastive_loss",
    "cosine_similarity_matrix",
    "load_trained",
    "masked_mean",
    "nig_loss",
    "plot_losses",
    "read_metrics",
    "run_stage1",
    "run_stage2",
]

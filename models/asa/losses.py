"""ASA's five losses. Each is a pure function of tensors; the λ weights are applied by the caller.

All are l2 distances as in the paper: the order loss is the MSE of the coordinates, the recovery loss
the MSE over every voxel, and the consistency losses the squared l2 distance of L2-normalised
embeddings (2 − 2·cos), which keeps the loss's scale independent of the projector's width.
"""

from __future__ import annotations

import torch
from torch import Tensor
from torch.nn import functional as F


def order_loss(pred: Tensor, target: Tensor) -> Tensor:
    """L_vop: MSE between predicted and true source coordinates, (B, N, 3)."""
    return F.mse_loss(pred.float(), target.float())


def recovery_loss(recon: Tensor, original: Tensor) -> Tensor:
    """L_var: MSE between the decoder output and the unshuffled volume, every voxel."""
    return F.mse_loss(recon.float(), original.float())


def embedding_distance(student: Tensor, teacher: Tensor) -> Tensor:
    """Squared l2 distance over the last axis, averaged over everything else. The teacher is a target."""
    return (student.float() - teacher.detach().float()).pow(2).sum(dim=-1).mean()


def global_loss(student: Tensor, teacher: Tensor) -> Tensor:
    """L_global between (B, D) embeddings."""
    return embedding_distance(student, teacher)


def local_loss(student: Tensor, teacher: Tensor, pairs: list[tuple[Tensor, Tensor]]) -> Tensor:
    """L_local: matched tokens' local embeddings, (B, N, D) each; mean over samples of the per-sample mean."""
    per_sample = [embedding_distance(student[b, i_s], teacher[b, i_t]) for b, (i_s, i_t) in enumerate(pairs)]
    return torch.stack(per_sample).mean()

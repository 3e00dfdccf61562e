"""The training losses of the evaluation protocols, also used by the methods' inner loops (one function per loss).

Soft cross-entropy against label distributions (DATM's soft labels) and Hinton's distillation loss (teacher protocol).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F


def soft_cross_entropy(logits: torch.Tensor, target_probs: torch.Tensor, reduction: str = "mean") -> torch.Tensor:
    """-sum_k p_ik log softmax(z_i)_k per row i; its mean over rows (reduction='mean') or the rows ('none')."""
    per = -(target_probs * F.log_softmax(logits, dim=1)).sum(1)
    return per.mean() if reduction == "mean" else per


def distillation_loss(logits: torch.Tensor, teacher_logits: torch.Tensor, temperature: float) -> torch.Tensor:
    """KL(softmax(t/T) || softmax(s/T)) * T^2 (Hinton et al.)."""
    t = temperature
    return F.kl_div(F.log_softmax(logits / t, 1), F.log_softmax(teacher_logits / t, 1), reduction="batchmean",
                    log_target=True) * t * t

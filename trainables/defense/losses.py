"""MID's multi-consistency distillation and PCL's prototype conformity loss.

Every loss here is a plain function of tensors so its value can be checked on hand-made inputs.
Two deliberate departures from the official code (see method-notes):
- the KL terms are proper KL divergences KL(p_teacher || p_student) over the channel axis; the
  official cyclic KL passed log-probabilities as the target;
- PCL's push terms are hinged at a margin, so the loss is bounded below by 0 (the released
  loss is unbounded below, issue #3 of its repository).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

__all__ = [
    "channel_kl",
    "feature_consistency",
    "pixel_consistency",
    "prediction_kl",
    "prototype_conformity",
]


def channel_kl(teacher: torch.Tensor, student: torch.Tensor, temperature: float = 1.0
               ) -> torch.Tensor:
    """KL(p_t || p_s) with softmax over channels at each position, averaged over positions.

    For N x C x H x W maps this is MID's feature-level consistency; N x D vectors are one
    position each.
    """
    log_p_teacher = F.log_softmax(teacher / temperature, dim=1)
    log_p_student = F.log_softmax(student / temperature, dim=1)
    per_position = (log_p_teacher.exp() * (log_p_teacher - log_p_student)).sum(dim=1)
    return per_position.mean()


def feature_consistency(teacher: torch.Tensor, student: torch.Tensor, kind: str = "kl"
                        ) -> torch.Tensor:
    """Teacher features of the clean input vs student features of the adversarial one."""
    if kind == "kl":
        return channel_kl(teacher, student)
    if kind == "mse":
        return F.mse_loss(student, teacher)
    raise ValueError(f"feature loss {kind!r} is unknown; choose 'kl' or 'mse'")


def pixel_consistency(regenerated: torch.Tensor, clean: torch.Tensor) -> torch.Tensor:
    """L1 distance of the image the teacher decoder regenerates from student features."""
    return F.l1_loss(regenerated, clean)


def prediction_kl(teacher_logits: torch.Tensor, student_logits: torch.Tensor,
                  temperature: float = 1.0) -> torch.Tensor:
    """Hinton's distillation term: T^2 * KL(softmax(t/T) || softmax(s/T)), batch mean."""
    return channel_kl(teacher_logits, student_logits, temperature) * temperature**2


def prototype_conformity(
    features: torch.Tensor, labels: torch.Tensor, prototypes: torch.Tensor, margin: float
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PCL with a polytope margin, bounded below by 0.

    Distances are root-mean-square over feature dimensions (||a - b||_2 / sqrt(D)), so one
    margin means the same for feature vectors of any width.

    - pull: distance of each feature to its own class prototype;
    - push: hinge max(0, margin - distance) to every other class prototype (mean over them);
    - separation: hinge max(0, 2 * margin - distance) between distinct prototypes, so that
      the margin-sized polytopes around them cannot overlap.

    Returns the sum and the three parts.
    """
    flat = features.flatten(1)
    scale = flat.shape[1] ** 0.5
    dist = torch.cdist(flat, prototypes) / scale  # N x K
    num_classes = prototypes.shape[0]
    own = F.one_hot(labels, num_classes).bool()
    pull = dist[own].mean()
    push = F.relu(margin - dist[~own]).mean()
    between = torch.cdist(prototypes, prototypes) / scale
    off_diagonal = ~torch.eye(num_classes, dtype=torch.bool, device=prototypes.device)
    separation = F.relu(2 * margin - between[off_diagonal]).mean()
    parts = {"pull": pull, "push": push, "separation": separation}
    return pull + push + separation, parts

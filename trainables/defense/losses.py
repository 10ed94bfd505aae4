"""The loss terms of a recipe: MID's multi-consistency distillation, PCL's prototype conformity,
TRADES' self-consistency, variation regularisation, and CE.

`TERMS` maps each loss weight of TrialConfig to the small function it multiplies; the weight's
field says on which tasks the term is computed, so a new term is one function here and one
`_weight` field in trainables/config.py (a test keeps the two equal). Every distance is a plain
function of tensors, so its value can be checked on hand-made inputs.
Two deliberate departures from the official code (see method-notes):
- the KL terms are proper KL divergences KL(p_teacher || p_student) over the channel axis; the
  official cyclic KL passed log-probabilities as the target;
- PCL's push terms are hinged at a margin, so the loss is bounded below by 0 (the released
  loss is unbounded below, issue #3 of its repository).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from trainables.config import TrialConfig

__all__ = [
    "TERMS",
    "TaskView",
    "channel_kl",
    "feature_consistency",
    "part_name",
    "pixel_consistency",
    "prediction_kl",
    "prototype_conformity",
    "term",
    "variation",
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


# ---------------------------------------------------------------- the loss terms of a recipe


@dataclass
class TaskView:
    """What the loss terms see of one task of a training step (with one set of weights).

    `logits`, `z` and `h` are the student's outputs on the task's images; the lazy fields are
    computed on first use by the step that built the view (a term that is off costs nothing).
    """

    clean: bool  # the task is the clean images
    x: torch.Tensor  # the batch's clean images
    y: torch.Tensor
    z: torch.Tensor  # student encoder output on the task's images
    h: torch.Tensor  # student penultimate features
    logits: torch.Tensor
    teacher_z: torch.Tensor  # frozen teacher encoder on the clean images
    teacher_logits: torch.Tensor
    config: TrialConfig  # the recipe: each term reads its own settings from it
    prototypes: Mapping[str, torch.Tensor]  # PCL's, per constrained layer
    regenerated: Callable[[], torch.Tensor]  # teacher decoder on the student's features
    reencoded: Callable[[torch.Tensor], torch.Tensor]  # the frozen teacher encoder
    own_clean_logits: Callable[[], torch.Tensor]  # the student (same weights) on clean images
    random_point_logits: Callable[[], torch.Tensor]  # ... at a random point of the region


LossTerm = Callable[[TaskView], torch.Tensor]
TERMS: dict[str, LossTerm] = {}  # weight name (TrialConfig) -> its term


def term(weight: str) -> Callable[[LossTerm], LossTerm]:
    """Registers the term that the recipe's `weight` multiplies (one per loss weight field;
    the field says on which tasks it is computed)."""
    def register(fn: LossTerm) -> LossTerm:
        if weight in TERMS:
            raise ValueError(f"loss term {weight} is registered twice")
        TERMS[weight] = fn
        return fn
    return register


def part_name(weight: str) -> str:
    """The training metric a term is logged under: `w_feat` -> `feat`."""
    return weight.removeprefix("w_")


@term("w_ce")
def _ce(v: TaskView) -> torch.Tensor:
    return F.cross_entropy(v.logits, v.y, label_smoothing=v.config.label_smoothing)


@term("w_ce_clean")
def _ce_clean(v: TaskView) -> torch.Tensor:
    return F.cross_entropy(v.logits, v.y, label_smoothing=v.config.label_smoothing)


@term("w_trades")
def _trades(v: TaskView) -> torch.Tensor:
    # TRADES differentiates through both sides: the clean prediction is not detached
    return prediction_kl(v.own_clean_logits(), v.logits)


@term("w_vr")
def _variation(v: TaskView) -> torch.Tensor:
    return variation(v.logits, v.random_point_logits())


@term("w_pred_kl")
def _pred_kl(v: TaskView) -> torch.Tensor:
    return prediction_kl(v.teacher_logits, v.logits)


@term("w_feat")
def _feat(v: TaskView) -> torch.Tensor:
    return feature_consistency(v.teacher_z, v.z, v.config.feat_loss)


@term("w_cyc")
def _cyc(v: TaskView) -> torch.Tensor:
    return channel_kl(v.teacher_z, v.reencoded(v.regenerated()))


@term("w_pix")
def _pix(v: TaskView) -> torch.Tensor:
    return pixel_consistency(v.regenerated(), v.x)


@term("w_pcl")
def _pcl(v: TaskView) -> torch.Tensor:
    feats = {"encoder": v.z, "penultimate": v.h}
    return torch.stack([prototype_conformity(feats[layer], v.y, protos, v.config.pcl_margin)[0]
                        for layer, protos in v.prototypes.items()]).sum()


def variation(logits: torch.Tensor, other: torch.Tensor) -> torch.Tensor:
    """Variation regularisation (Dai et al. 2022): how far the model's output moves between
    two points of the same threat region, as the squared L2 distance of the softmax outputs
    (batch mean); 0 exactly when the outputs do not vary."""
    return (F.softmax(logits, dim=1) - F.softmax(other, dim=1)).square().sum(dim=1).mean()

"""Scoring a model served behind an API (a scores claim): what the output costs and what the
adaptive query attackers and the white-box reference attacks leave standing.

- the output-change cost: on clean inputs, the mean total-variation distance between the
  defended and the undefended model's probabilities, and the share of points whose top-1
  class agrees (UniG's promise: the served output barely changes);
- the adaptive query group: every query attack of a group asked again adaptively at the same
  budget (each query answered with the mean of MASKING_REPEATS, each point asked alone, and
  both), AND-ed per point with the plain attack: the number to trust for a defense whose
  output changes from query to query or with the batch (for a model whose answers do not, the
  plain result itself);
- the white-box reference group: PGD and APGD in the threat model's norm, reported beside the
  query rows (a scores claim does not need them to hold, a reader wants to see them).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.attacks import attack_spec, build_attack
from trainables.attacks.query import Adaptive
from trainables.attacks.threat import ThreatModel
from trainables.scoring.evaluate import clean_correct, robust_mask
from trainables.scoring.masking import answers_depend_on_asking
from trainables.scoring.stats import mean_interval
from trainables.vocab import MASKING_REPEATS, Group, Norm, Stat, group_metric, high_key, low_key

__all__ = ["ADAPTIVE_ASKING", "WHITE_BOX_REFERENCE", "adaptive_query_masks", "output_change"]

# How the adaptive query attackers ask (query.py), each at the attack's own budget
ADAPTIVE_ASKING = (Adaptive(repeats=MASKING_REPEATS), Adaptive(single_point=True),
                   Adaptive(repeats=MASKING_REPEATS, single_point=True))
WHITE_BOX_REFERENCE = {Norm.LINF: ("PGD", "APGD"), Norm.L2: ("PGDL2", "APGD-L2")}


@torch.no_grad()
def _probabilities(model: nn.Module, x: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([F.softmax(model(x[i:i + batch_size]), dim=1)
                      for i in range(0, len(x), batch_size)])


def output_change(model: nn.Module, reference: nn.Module, x: torch.Tensor, *, split: str,
                  batch_size: int) -> tuple[dict[str, float], dict[str, np.ndarray]]:
    """The output-change cost of `model` against the undefended `reference` on clean `x`:
    metrics (with their intervals) and the per-point values they are means of."""
    model.eval()
    reference.eval()
    ours, theirs = _probabilities(model, x, batch_size), _probabilities(reference, x, batch_size)
    points = {group_metric(split, Group.OUTPUT, Stat.PROB_CHANGE):
              ((ours - theirs).abs().sum(1) / 2).cpu().numpy(),
              group_metric(split, Group.OUTPUT, Stat.TOP1_AGREEMENT):
              (ours.argmax(1) == theirs.argmax(1)).float().cpu().numpy()}
    metrics = {}
    for key, values in points.items():
        interval = mean_interval(np.clip(values, 0.0, 1.0))
        metrics.update({key: interval.value, low_key(key): interval.low,
                        high_key(key): interval.high})
    return metrics, points


def adaptive_query_masks(model: nn.Module, x: torch.Tensor, y: torch.Tensor,
                         plain: Mapping[str, torch.Tensor], threat: ThreatModel, *,
                         num_classes: int, batch_size: int, seed: int
                         ) -> dict[str, torch.Tensor]:
    """Per query attack of `plain` (name -> its plain robust mask), the mask AND-ed over the
    adaptive ways of asking; attacks without a query budget are left out."""
    correct = clean_correct(model, x, y, batch_size)
    # A model that answers the same however it is asked (the same answer on every pass, each
    # point's answer its own) shows the adaptive attacker what it showed the plain one: the
    # plain result stands, and the queries (each point alone, 5 times over) are not spent.
    adapts = answers_depend_on_asking(model, x[:batch_size])
    masks = {}
    for name, mask in plain.items():
        if not attack_spec(name).query_based or "@" not in name:
            continue
        masks[name] = mask.clone()
        for adaptive in ADAPTIVE_ASKING if adapts else ():
            attack = build_attack(name, model, threat, num_classes=num_classes, seed=seed,
                                  adaptive=adaptive)
            masks[name] &= robust_mask(model, attack, x, y, correct, batch_size=batch_size,
                                       seed=seed, stream=f"{name}/{adaptive.name}")
    return masks


def white_box_names(threat: ThreatModel) -> Sequence[str]:
    return WHITE_BOX_REFERENCE.get(Norm(threat.norm), WHITE_BOX_REFERENCE[Norm.LINF])

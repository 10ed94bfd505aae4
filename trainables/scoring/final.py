"""The final evaluation: a defended model's report on the test split (what the search's final
comparison runs on every recipe and seed).

The test split and the sealed attacks are never used while searching. The report holds:
- `test/heldout/...` and `test/sealed/...`: those attacks at `strength` x their iterations,
  queries and restarts, each non-Lp one on the CE and the margin loss (masking.both_losses);
  the non-Lp ones and Pixle craft in `eval_precision` (bfloat16 where the device has it:
  attacks/precision.py), every point judged in float32;
- `test/transfer/...`: the held-out attacks crafted on the undefended target (MID's own
  protocol), kept apart from the white-box numbers;
- models with UniG: each gradient-based held-out and sealed attack also run through BPDA and
  on the model without UniG, all judged on the defended model, AND-ed with the plain attack
  (masking.adaptive_and): that is what their `test/heldout/...` and `test/sealed/...` are, and
  `test/adaptive/...` repeats the gradient-based held-out ones;
- for a scores claim (a served model): `test/adaptive_query/...`, each query attack asked
  adaptively (repeats averaged, points alone) at its own budget, AND-ed with the plain one, on
  the AutoAttack points; and `test/white_box/...`, PGD and APGD beside the query rows
  (trainables/scoring/served.py);
- `test/output/...`: the output-change cost against the undefended teacher on clean inputs;
- per-point values of each summary (clean, a group's mean, union and family mean, AutoAttack)
  and of each held-out and sealed family, for paired differences;
- `test/autoattack/acc`: the official AutoAttack (Croce & Hein's code, `pyautoattack`),
  version `standard` (`rand`, with EOT, for a randomised model), where the threat model fits,
  on `autoattack_samples` points: each seed its own block of them, so a recipe's seeds cover
  several blocks; its own sanity warnings are counted in `test/autoattack/warnings`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch

from trainables.attacks import attack_spec, build_attack
from trainables.attacks.base import Attack
from trainables.attacks.threat import ThreatModel
from trainables.config import TrialConfig
from trainables.defense.models import DefendedModel
from trainables.scoring.evaluate import (
    attack_precision,
    clean_correct,
    evaluate_groups,
    family_masks,
    group_metrics,
    group_points,
    predict,
    transfer_masks,
)
from trainables.scoring.masking import adaptive_and, both_losses, is_randomized, plain_loss
from trainables.scoring.served import adaptive_query_masks, output_change, white_box_names
from trainables.scoring.stats import wilson
from trainables.setting.prepare import Shared
from trainables.vocab import (
    SEALED_STRENGTH,
    TIME_AUTOATTACK,
    TIME_FINAL,
    Access,
    EvalLosses,
    Group,
    Norm,
    Split,
    Stat,
    attack_metric,
    group_metric,
    high_key,
    low_key,
)

__all__ = ["Evaluation", "autoattack_points", "autoattack_robust", "final_evaluation"]


@dataclass
class Evaluation:
    """A model's final report: its metrics, and for each summary metric (clean accuracy, a
    group's mean, union and family mean, AutoAttack) and each held-out and sealed family's
    accuracy the per-point values it is the mean of, which paired comparisons and intervals
    over seeds need."""

    metrics: dict[str, float]
    points: dict[str, np.ndarray]


def autoattack_robust(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                      threat: ThreatModel, *, num_classes: int, seed: int, batch_size: int
                      ) -> tuple[torch.Tensor, list[str], str] | None:
    """Which points survive the official AutoAttack, its warnings, and the version run.

    None where AutoAttack does not apply (an L0 threat model, or fewer than 4 classes: its
    targeted DLR attacks need them).
    """
    if threat.norm not in (Norm.LINF, Norm.L2, Norm.L1) or num_classes < 4:
        return None
    from pyautoattack import AutoAttack, checks

    # pyautoattack 0.2.0 counts the autograd calls it traces in a module-level dict it never
    # resets: once one model with a test-time optimisation (UniG) was checked, every later
    # model of the process would be called "a dynamic defense" too
    checks.funcs.update(dict.fromkeys(checks.funcs, 0))
    version = "rand" if is_randomized(model, x[:batch_size]) else "standard"
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attack = AutoAttack(model, norm=threat.norm, eps=threat.eps, version=version,
                            seed=seed, device=x.device)
        attack.verbose = False
        x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=batch_size)
    robust = clean_correct(model, x, y, batch_size) & (predict(model, x_adv, batch_size) == y)
    notes = [str(w.message) for w in caught if "autoattack" in str(w.filename).replace("_", "")]
    return robust, notes, version


def _served(model: DefendedModel, config: TrialConfig, shared: Shared, x: torch.Tensor,
            y: torch.Tensor, by_group: dict[str, dict[str, torch.Tensor]],
            metrics: dict[str, float]) -> dict[str, np.ndarray]:
    """The output-change cost against the clean-trained teacher (into `metrics`; its
    per-point values returned) and, for a scores claim, the held-out and sealed query attacks
    asked adaptively on the AutoAttack points (into `by_group`)."""
    teacher = DefendedModel(shared.teacher.encoder, shared.teacher.head).to(x.device).eval()
    cost, points = output_change(model, teacher, x, split=Split.TEST,
                                 batch_size=config.eval_batch_size)
    metrics.update(cost)
    if config.access == Access.SCORES:
        part = autoattack_points(config, len(y))
        plain = {name: mask[part] for group in (Group.HELDOUT, Group.SEALED)
                 for name, mask in by_group[group].items()}
        by_group[Group.ADAPTIVE_QUERY] = adaptive_query_masks(
            model, x[part], y[part], plain, shared.setup.threat,
            num_classes=shared.setup.info.num_classes, batch_size=config.eval_batch_size,
            seed=config.seed)
    return points


def autoattack_points(config: TrialConfig, total: int) -> torch.Tensor:
    """Which of the `total` test points AutoAttack runs on (their indices, ascending):
    `autoattack_samples` of them (all: 0), a different block for each seed, so that a recipe's
    seeds together cover several times as many points (a narrower interval over its mean) at
    one block's cost per model. The blocks are cut from a permutation seeded by the data seed
    (every recipe of a seed gets the same points, so differences stay paired): a split's
    points are in the data set's order, and a data set sorted by class (mnist5k's is) gave a
    block of the first points one or two digits."""
    count = min(config.autoattack_samples or total, total)
    if count == total:
        return torch.arange(total)
    order = torch.randperm(total, generator=torch.Generator().manual_seed(config.data_seed))
    start = (config.seed * count) % (total - count + 1)
    return order[start:start + count].sort().values


def _autoattack(model: DefendedModel, shared: Shared, config: TrialConfig, x: torch.Tensor,
                y: torch.Tensor, metrics: dict[str, float], log: Callable[[str], None]
                ) -> dict[str, torch.Tensor]:
    """The official AutoAttack on this seed's block of points (its accuracy, interval, warnings
    and time into `metrics`); the robust mask, keyed like the metric."""
    started = time.perf_counter()
    part, out = autoattack_points(config, len(y)), {}
    found = autoattack_robust(model, x[part], y[part], shared.setup.threat,
                              num_classes=shared.setup.info.num_classes, seed=config.seed,
                              batch_size=config.eval_batch_size)
    if found is not None:
        robust, notes, version = found
        key = group_metric(Split.TEST, Group.AUTOATTACK, Stat.ACC)
        out[key] = robust
        interval = wilson(robust.cpu().numpy())
        metrics.update({key: interval.value, low_key(key): interval.low,
                        high_key(key): interval.high})
        metrics[group_metric(Split.TEST, Group.AUTOATTACK, "warnings")] = float(len(notes))
        for note in notes:
            log(f"AutoAttack ({version}) warning: {note.splitlines()[0]}")
    metrics[TIME_AUTOATTACK] = time.perf_counter() - started
    return out


def _attack_groups(model: DefendedModel, shared: Shared, config: TrialConfig, strength: float,
                   precision: torch.dtype | None) -> dict[str, list[Attack]]:
    """The held-out and sealed attacks (and for a scores claim the white-box ones) bound to
    `model`, crafting in `precision` where they can (build_attack)."""
    setup = shared.setup

    def bind(names: tuple[str, ...], first: EvalLosses | None) -> list[Attack]:
        return [build_attack(n, model, setup.threat, num_classes=setup.info.num_classes,
                             strength=strength, seed=config.seed, precision=precision,
                             **plain_loss(n, first))
                for n in names]

    # the first loss as eval_losses says where both_losses adds the other
    groups: dict[str, list[Attack]] = {Group.HELDOUT: bind(config.heldout, config.eval_losses),
                                       Group.SEALED: bind(config.sealed, config.eval_losses)}
    if config.access == Access.SCORES:
        groups[Group.WHITE_BOX] = bind(tuple(white_box_names(setup.threat)), None)
    return groups


def final_evaluation(model: DefendedModel, shared: Shared, config: TrialConfig, *,
                      strength: float = SEALED_STRENGTH, autoattack: bool = True,
                      log: Callable[[str], None] = print) -> Evaluation:
    """The final report of one defended model (see the module docstring for the metrics)."""
    start = time.perf_counter()
    setup, device = shared.setup, next(model.parameters()).device
    model.eval()
    x, y = (t.to(device) for t in shared.points(Split.TEST, config))
    precision = attack_precision(model, config.eval_precision, device)
    groups = _attack_groups(model, shared, config, strength, precision)
    metrics, masks = evaluate_groups(model, x, y, groups, split=Split.TEST,
                                     batch_size=config.eval_batch_size, seed=config.seed)
    by_group: dict[str, dict[str, torch.Tensor]] = {
        group: {name.split("/", 1)[1]: mask for name, mask in masks.items()
                if name.startswith(f"{group}/")} for group in groups}
    cost_points = _served(model, config, shared, x, y, by_group, metrics)
    if shared.transfer.get("test"):
        by_group[Group.TRANSFER] = transfer_masks(model, x, y, shared.transfer["test"],
                                                  setup.threat,
                                                  batch_size=config.eval_batch_size)
    if model.unig is not None:  # what an attacker who knows UniG reaches (adaptive_and)
        for group in (Group.HELDOUT, Group.SEALED):
            by_group[group] = adaptive_and(
                model, by_group[group], x, y, setup.threat,
                num_classes=setup.info.num_classes, strength=strength,
                batch_size=config.eval_batch_size, seed=config.seed,
                losses=config.eval_losses)
    for group in (Group.HELDOUT, Group.SEALED):  # CE saturates: the margin loss too
        by_group[group] = both_losses(model, by_group[group], x, y, setup.threat,
                                      num_classes=setup.info.num_classes, strength=strength,
                                      batch_size=config.eval_batch_size, seed=config.seed,
                                      precision=precision, losses=config.eval_losses)
        metrics.update(group_metrics(Split.TEST, group, by_group[group]))
    if model.unig is not None:  # the held-out ones again, as scored
        by_group[Group.ADAPTIVE] = {name: mask for name, mask in by_group[Group.HELDOUT].items()
                                    if attack_spec(name).gradient_based}
    for group in (Group.TRANSFER, Group.ADAPTIVE, Group.ADAPTIVE_QUERY):
        if by_group.get(group):
            metrics.update(group_metrics(Split.TEST, group, by_group[group]))
    binary = {group_metric(Split.TEST, Group.CLEAN, Stat.ACC): masks[Group.CLEAN]}
    if autoattack:
        binary.update(_autoattack(model, shared, config, x, y, metrics, log))
    points = {key: mask.float().cpu().numpy() for key, mask in binary.items()}
    points.update(cost_points)
    for name, group_masks in by_group.items():
        if group_masks:
            points.update({group_metric(Split.TEST, name, stat): values
                           for stat, values in group_points(group_masks).items()})
    for group in (Group.HELDOUT, Group.SEALED):  # which family a verdict rests on
        points.update({attack_metric(Split.TEST, group, family): mask.float().cpu().numpy()
                       for family, mask in family_masks(by_group[group]).items()})
    metrics[TIME_FINAL] = time.perf_counter() - start
    return Evaluation(metrics, points)

"""The sealed evaluation: a defended model's final report, on the test split.

The test split and the sealed attacks are never used while searching. The report holds:
- `test/heldout/...` and `test/sealed/...`: those attacks at `strength` x their iterations,
  queries and restarts;
- `test/transfer/...`: the held-out attacks crafted on the undefended target (MID's own
  protocol), kept apart from the white-box numbers;
- `test/adaptive/...` (models with UniG): each gradient-based held-out attack also run through
  BPDA and on the model without UniG, all judged on the defended model, AND-ed with the plain
  attack; this is the number to trust for UniG;
- `test/autoattack/acc`: the official AutoAttack (Croce & Hein's code, `pyautoattack`),
  version `standard` (`rand`, with EOT, for a randomised model), where the threat model fits;
  its own sanity warnings are counted in `test/autoattack/warnings`.
"""

from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Callable

import torch

from trainables.attacks import BoundAttack, attack_spec, bind_attack
from trainables.config import TrialConfig
from trainables.evaluate import (
    clean_correct,
    evaluate_groups,
    group_metrics,
    predict,
    robust_mask,
    transfer_masks,
)
from trainables.masking import StraightThrough
from trainables.models import DefendedModel
from trainables.prepare import Shared
from trainables.threat import ThreatModel

__all__ = ["SEALED_STRENGTH", "autoattack_accuracy", "sealed_evaluation"]

SEALED_STRENGTH = 2.0
GRADIENT_FAMILIES = ("single-step", "iterative", "min-norm")


def _randomized(model: torch.nn.Module, x: torch.Tensor) -> bool:
    with torch.no_grad():
        return bool((model(x) - model(x)).abs().max() > 1e-5)


def autoattack_accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor,
                        threat: ThreatModel, *, num_classes: int, seed: int, batch_size: int
                        ) -> tuple[float, list[str], str] | None:
    """Robust accuracy under the official AutoAttack, its warnings, and the version run.

    None where AutoAttack does not apply (an L0 threat model, or fewer than 4 classes: its
    targeted DLR attacks need them).
    """
    if threat.norm not in ("Linf", "L2", "L1") or num_classes < 4:
        return None
    from pyautoattack import AutoAttack

    version = "rand" if _randomized(model, x[:batch_size]) else "standard"
    logging.getLogger("auto-attack").setLevel(logging.WARNING)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        attack = AutoAttack(model, norm=threat.norm, eps=threat.eps, version=version,  # type: ignore[arg-type]
                            seed=seed, device=x.device)
        attack.verbose = False
        x_adv, _ = attack.run_standard_evaluation(x, y, batch_size=batch_size)
    robust = clean_correct(model, x, y, batch_size) & (predict(model, x_adv, batch_size) == y)
    notes = [str(w.message) for w in caught if "autoattack" in str(w.filename).replace("_", "")]
    return float(robust.float().mean()), notes, version


def _adaptive(model: DefendedModel, config: TrialConfig, shared: Shared, x: torch.Tensor,
              y: torch.Tensor, plain: dict[str, torch.Tensor], strength: float
              ) -> dict[str, torch.Tensor]:
    """Gradient-based held-out attacks through BPDA and on the model without UniG."""
    base = DefendedModel(model.encoder, model.head).eval()
    surrogates: dict[str, torch.nn.Module] = {"bpda": StraightThrough(model, base),
                                              "module_free": base}
    correct = clean_correct(model, x, y, config.eval_batch_size)
    masks = {}
    for name in config.heldout:
        if attack_spec(name).family not in GRADIENT_FAMILIES:
            continue
        mask = plain[f"heldout/{name}"].clone()
        for via in surrogates.values():
            crafted = bind_attack(name, via, shared.setup.threat,
                                  num_classes=shared.setup.info.num_classes, strength=strength,
                                  seed=config.seed)
            judged = BoundAttack(crafted.spec, crafted.attack, crafted.budget)
            mask &= robust_mask(model, judged, x, y, correct, batch_size=config.eval_batch_size,
                                seed=config.seed)
        masks[name] = mask
    return masks


def sealed_evaluation(model: DefendedModel, shared: Shared, config: TrialConfig, *,
                      strength: float = SEALED_STRENGTH, autoattack: bool = True,
                      log: Callable[[str], None] = print) -> dict[str, float]:
    """The final report of one defended model (see the module docstring for the metrics)."""
    start = time.perf_counter()
    setup, device = shared.setup, next(model.parameters()).device
    model.eval()
    x, y = (t.to(device) for t in shared.split("test"))

    def bind(names: tuple[str, ...]) -> list[BoundAttack]:
        return [bind_attack(n, model, setup.threat, num_classes=setup.info.num_classes,
                            strength=strength, seed=config.seed) for n in names]

    groups = {"heldout": bind(config.heldout), "sealed": bind(config.sealed)}
    metrics, masks = evaluate_groups(model, x, y, groups, split="test",
                                     batch_size=config.eval_batch_size, seed=config.seed)
    if shared.transfer.get("test"):
        metrics.update(group_metrics("test/transfer", transfer_masks(
            model, x, y, shared.transfer["test"], setup.threat,
            batch_size=config.eval_batch_size)))
    if model.unig is not None:
        metrics.update(group_metrics("test/adaptive",
                                     _adaptive(model, config, shared, x, y, masks, strength)))
    if autoattack:
        found = autoattack_accuracy(model, x, y, setup.threat,
                                    num_classes=setup.info.num_classes, seed=config.seed,
                                    batch_size=config.eval_batch_size)
        if found is not None:
            accuracy, notes, version = found
            metrics["test/autoattack/acc"] = accuracy
            metrics["test/autoattack/warnings"] = float(len(notes))
            for note in notes:
                log(f"AutoAttack ({version}) warning: {note.splitlines()[0]}")
    metrics["time/sealed_s"] = time.perf_counter() - start
    return metrics

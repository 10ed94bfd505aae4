"""Gradient-masking checks: the signs that a model only *looks* robust (robustness-notes 1.3).

Each check is one registered function of a CheckContext returning (raised, evidence). They share
a cache of attack results, so the whole checklist costs a handful of attacks on a fixed subset.
Sources: Athalye et al. 2018, Tramer et al. 2020, Carlini et al. 2019; thresholds from the
notes' measurements (two deliberately masked toy models flagged, two honest ones not).

Informational flags (a randomised model, backward called inside forward) say how to attack the
model (EOT, BPDA) but are no masking by themselves; every other raised flag counts as masking.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

import torch
import torch.nn.functional as F
import torchattacks as ta
from torch import nn

from trainables.attacks import AttackSpec, BoundAttack
from trainables.errors import ConfigError
from trainables.evaluate import clean_correct, robust_mask
from trainables.models import DefendedModel
from trainables.registry import Registry
from trainables.threat import ThreatModel

__all__ = ["CheckContext", "MaskingReport", "StraightThrough", "list_checks",
           "run_masking_checks"]

GAP = 0.02  # a weaker attack beating a stronger one by more than this is suspicious
STEPS_GAP = 0.05  # PGD-50 below PGD-10 by more than this: the attack had not converged
DLR_GAP = 0.10  # the DLR loss beating CE by this much: logits are saturated or rescaled
LARGE_EPS_ACC = 0.05  # at 4x the budget an honest model is (almost) never right
UNBOUNDED_SUCCESS = 0.95  # an unbounded CW should flip (almost) every point
EPS_SWEEP = (0.5, 1.0, 2.0, 4.0)


@dataclass
class CheckContext:
    """What the checks may use; `results` caches robust accuracies by attack key."""

    model: nn.Module
    x: torch.Tensor
    y: torch.Tensor
    threat: ThreatModel
    num_classes: int
    base: nn.Module | None = None  # the model without its test-time module (UniG), if any
    surrogate: nn.Module | None = None  # an undefended model of the same task
    batch_size: int = 256
    seed: int = 0
    results: dict[str, float] = field(default_factory=dict)
    randomized: bool = False

    @property
    def correct(self) -> torch.Tensor:
        if "_correct" not in self.__dict__:
            self.__dict__["_correct"] = clean_correct(self.model, self.x, self.y, self.batch_size)
        return self.__dict__["_correct"]

    @property
    def linf(self) -> bool:
        return self.threat.norm == "Linf"

    def accuracy(self, key: str, make: Callable[[], Callable[..., torch.Tensor]],
                 *, norm: str | None = None, budget: float | None = None) -> float:
        """Robust accuracy of `model` under the attack `make()` builds (cached by key)."""
        if key not in self.results:
            norm = norm or self.threat.norm
            budget = budget if budget is not None else self.threat.eps
            spec = AttackSpec(key, norm, "iterative", build=lambda _: None)  # type: ignore[arg-type]
            attack = BoundAttack(spec, make(), budget)  # type: ignore[arg-type]
            mask = robust_mask(self.model, attack, self.x, self.y, self.correct,
                               batch_size=self.batch_size, seed=self.seed)
            self.results[key] = float(mask.float().mean())
        return self.results[key]

    def pgd(self, model: nn.Module, steps: int, eps: float | None = None) -> ta.Attack:
        eps = self.threat.eps if eps is None else eps
        if self.randomized:  # expectation over the model's randomness
            return ta.EOTPGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps, eot_iter=5)
        if self.linf:
            return ta.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps)
        return ta.PGDL2(model, eps=eps, alpha=2.5 * eps / steps, steps=steps)

    def white_box(self) -> float:
        """The strongest of the gradient attacks run so far (PGD-10 at least; the full list
        runs APGD-CE/DLR and PGD-50 before the checks that compare against this)."""
        self.accuracy("pgd10", lambda: self.pgd(self.model, 10))
        keys = [k for k in ("pgd10", "pgd50", "apgd_ce", "apgd_dlr") if k in self.results]
        return min(self.results[k] for k in keys)


Check = Callable[[CheckContext], tuple[bool, dict[str, float]]]


@dataclass(frozen=True)
class _Entry:
    check: Check
    masking: bool  # raised, it counts as masking (not just information)
    quick: bool  # cheap enough (PGD-10 at most) to run at every evaluation of a trial


_CHECKS: Registry[_Entry] = Registry("masking check")


def register_check(*, masking: bool = True, quick: bool = False) -> Callable[[Check], Check]:
    def decorate(fn: Check) -> Check:
        _CHECKS.add(fn.__name__, _Entry(fn, masking, quick))
        return fn
    return decorate


def list_checks() -> list[str]:
    return _CHECKS.names()


class StraightThrough(nn.Module):
    """BPDA for a test-time module: forward = the defended model, gradient = the base model."""

    def __init__(self, defended: nn.Module, base: nn.Module) -> None:
        super().__init__()
        self.defended, self.base = defended, base

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        with torch.no_grad():
            value = self.defended(x)
        base = self.base(x)
        return base + (value - base).detach()


# ---------------------------------------------------------------- model-level signs


@register_check(quick=True)
def probability_output(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#1: the model returns probabilities (rows in [0,1] summing to 1), not logits."""
    with torch.no_grad():
        out = c.model(c.x[: c.batch_size])
    rows = (out.min() >= 0) & (out.max() <= 1) & torch.allclose(out.sum(1), torch.ones(len(out)),
                                                               atol=1e-4)
    return bool(rows), {"row_sum_mean": float(out.sum(1).mean())}


@register_check(masking=False, quick=True)
def randomized(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#2: repeated forward passes differ (white-box checks then use EOT)."""
    with torch.no_grad():
        outs = [c.model(c.x[: c.batch_size]) for _ in range(3)]
    spread = max(float((o - outs[0]).abs().max()) for o in outs[1:])
    flips = max(float((o.argmax(1) != outs[0].argmax(1)).float().mean()) for o in outs[1:])
    c.randomized = spread > 1e-5
    return c.randomized, {"logit_spread": spread, "prediction_flips": flips}


@register_check(masking=False, quick=True)
def backward_in_forward(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#11: autograd runs inside forward (a test-time optimisation loop; attack it with BPDA)."""
    calls = {"n": 0}
    original = torch.autograd.grad

    def counting(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        return original(*args, **kwargs)  # type: ignore[arg-type]

    torch.autograd.grad = counting  # type: ignore[assignment]
    try:
        with torch.no_grad():
            c.model(c.x[:8])
    finally:
        torch.autograd.grad = original
    return calls["n"] > 0, {"autograd_calls_per_forward": float(calls["n"])}


@register_check(quick=True)
def zero_gradient(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#3: points whose input gradient of the CE loss is exactly zero."""
    x = c.x.clone().requires_grad_(True)
    loss = F.cross_entropy(c.model(x), c.y, reduction="sum")
    (grad,) = torch.autograd.grad(loss, x)
    share = float((grad.flatten(1).abs().amax(1) == 0).float().mean())
    return share > 0, {"zero_grad_share": share}


# ---------------------------------------------------------------- attack-level signs


@register_check()
def one_step_beats_iterative(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#4a: FGSM does better than PGD-10 (iterating should only help)."""
    eps = c.threat.eps
    fgsm = c.accuracy("fgsm", lambda: ta.FGSM(c.model, eps=eps) if c.linf
                      else ta.PGDL2(c.model, eps=eps, alpha=eps, steps=1, random_start=False))
    pgd = c.accuracy("pgd10", lambda: c.pgd(c.model, 10))
    return fgsm < pgd - GAP, {"fgsm_acc": fgsm, "pgd10_acc": pgd}


@register_check()
def more_steps_help(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#4b: PGD-50 far below PGD-10: short attacks underestimate (noisy or flat gradients)."""
    pgd10 = c.accuracy("pgd10", lambda: c.pgd(c.model, 10))
    pgd50 = c.accuracy("pgd50", lambda: c.pgd(c.model, 50))
    return pgd50 < pgd10 - STEPS_GAP, {"pgd10_acc": pgd10, "pgd50_acc": pgd50}


@register_check()
def dlr_much_stronger(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#5: APGD with the DLR loss far stronger than with CE (saturated or rescaled logits)."""
    if c.num_classes < 3:
        return False, {}
    norm = c.threat.norm if c.threat.norm in ("Linf", "L2") else "Linf"
    ce = c.accuracy("apgd_ce", lambda: ta.APGD(c.model, norm=norm, eps=c.threat.eps, steps=50,
                                               loss="ce", seed=c.seed))
    dlr = c.accuracy("apgd_dlr", lambda: ta.APGD(c.model, norm=norm, eps=c.threat.eps, steps=50,
                                                 loss="dlr", seed=c.seed))
    return dlr < ce - DLR_GAP, {"apgd_ce_acc": ce, "apgd_dlr_acc": dlr}


@register_check()
def black_box_beats_white_box(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#6: the score-based Square attack (1000 queries) beats the best gradient attack."""
    norm = "Linf" if c.linf else "L2"
    square = c.accuracy("square", lambda: ta.Square(c.model, norm=norm, eps=c.threat.eps,
                                                    n_queries=1000, p_init=0.3, seed=c.seed))
    best = c.white_box()
    return square < best - GAP, {"square_acc": square, "white_box_acc": best}


@register_check()
def noise_beats_white_box(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#7: uniform noise at the budget does as well as the best gradient attack."""
    eps = c.threat.eps

    def noise() -> Callable[[torch.Tensor, torch.Tensor], torch.Tensor]:
        def attack(x: torch.Tensor, _: torch.Tensor) -> torch.Tensor:
            delta = torch.empty_like(x).uniform_(-1, 1)
            if not c.linf:  # a random direction of L2 length eps
                delta = delta / delta.flatten(1).norm(dim=1).view(-1, 1, 1, 1)
            return (x + eps * delta).clamp(0, 1)
        return attack

    noisy = c.accuracy("noise", noise)
    best = c.white_box()
    return noisy <= best, {"noise_acc": noisy, "white_box_acc": best}


@register_check(quick=True)
def eps_sweep(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#8: PGD-10 at eps x {0.5, 1, 2, 4}: accuracy must fall, and be ~0 at the largest."""
    limit = 1.0 if c.linf else float(c.x[0].numel()) ** 0.5
    accs = []
    for scale in EPS_SWEEP:
        eps = min(limit, c.threat.eps * scale)
        accs.append(c.accuracy(f"pgd10_eps_x{scale:g}", lambda e=eps: c.pgd(c.model, 10, eps=e),
                               budget=eps))
    rises = any(later > earlier + GAP for earlier, later in itertools.pairwise(accs))
    evidence = {f"pgd10_acc_eps_x{s:g}": a for s, a in zip(EPS_SWEEP, accs, strict=True)}
    return rises or accs[-1] > LARGE_EPS_ACC, evidence


@register_check()
def unbounded_attack_fails(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#9: an unbounded CW (100 steps) should flip (almost) every correctly classified point."""
    unbounded = c.accuracy("cw_unbounded", lambda: ta.CW(c.model, c=10.0, steps=100, lr=0.05),
                           norm="L2", budget=float("inf"))
    correct = float(c.correct.float().mean())
    success = 1 - unbounded / correct if correct else 1.0
    return success < UNBOUNDED_SUCCESS, {"cw_unbounded_success": success}


@register_check(quick=True)
def transfer_beats_white_box(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """#10: PGD crafted on an undefended surrogate beats PGD on the model itself."""
    if c.surrogate is None:
        return False, {}
    transfer = c.accuracy("transfer_pgd10", lambda: c.pgd(c.surrogate, 10))
    best = c.white_box()
    return transfer < best - GAP, {"transfer_acc": transfer, "white_box_acc": best}


@register_check(quick=True)
def adaptive_beats_plain(c: CheckContext) -> tuple[bool, dict[str, float]]:
    """Adaptive attacks on a test-time module (UniG) beat the plain white-box attacks.

    Two adaptive attacks, both judged on the defended model: BPDA (forward through the
    defended model, gradient of the model without the module) and PGD crafted on the model
    without the module. The second matters when the module saturates the logits: then even
    BPDA's loss gradient vanishes, while the module-free loss still points somewhere.
    """
    if c.base is None:
        return False, {}
    straight = StraightThrough(c.model, c.base)
    bpda = c.accuracy("bpda_pgd10", lambda: c.pgd(straight, 10))
    bypass = c.accuracy("base_pgd10", lambda: c.pgd(c.base, 10))
    plain = c.white_box()
    adaptive = min(bpda, bypass)
    return adaptive < plain - GAP, {"bpda_acc": bpda, "module_free_acc": bypass,
                                    "adaptive_acc": adaptive, "white_box_acc": plain}


# ---------------------------------------------------------------- the whole checklist


@dataclass
class MaskingReport:
    flags: dict[str, bool]
    evidence: dict[str, float]
    masking: tuple[str, ...]  # the raised flags that count as masking

    @property
    def masked(self) -> bool:
        return bool(self.masking)

    def metrics(self, prefix: str = "masking") -> dict[str, float]:
        out = {f"{prefix}/{name}": float(raised) for name, raised in self.flags.items()}
        out.update({f"{prefix}/evidence/{k}": v for k, v in self.evidence.items()})
        out[f"{prefix}/any"] = float(self.masked)
        return out


def run_masking_checks(model: nn.Module, x: torch.Tensor, y: torch.Tensor, threat: ThreatModel,
                       *, num_classes: int, surrogate: nn.Module | None = None,
                       batch_size: int = 256, seed: int = 0, quick: bool = False
                       ) -> MaskingReport:
    """Runs the registered checks (randomness first: it decides whether the others use EOT).

    `quick` runs only the cheap ones (PGD-10 at most), the set a trial runs at every
    evaluation so the search sees masking from its first report. For a DefendedModel with a
    test-time module (UniG), the same model without it is the base for the adaptive check.
    """
    if threat.norm not in ("Linf", "L2"):
        raise ConfigError(f"masking checks need a Linf or L2 threat model, got {threat.norm}")
    base = None
    if isinstance(model, DefendedModel) and model.unig is not None:
        base = DefendedModel(model.encoder, model.head).eval()
    model.eval()
    ctx = CheckContext(model, x, y, threat, num_classes, base, surrogate, batch_size, seed)
    flags: dict[str, bool] = {}
    evidence: dict[str, float] = {}
    order = ["randomized"] + [n for n in list_checks()
                              if n != "randomized" and (_CHECKS.get(n).quick or not quick)]
    for name in order:
        raised, found = _CHECKS.get(name).check(ctx)
        flags[name] = bool(raised)
        evidence.update(found)
    masking = tuple(n for n in order if flags[n] and _CHECKS.get(n).masking)
    return MaskingReport(flags, evidence, masking)

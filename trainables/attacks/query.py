"""Query attacks under a query budget: the model behind a counter, and the adaptive ways to ask.

A query attack (Square, SPSA: torchattacks; SimBA: the adversarial-robustness-toolbox; a
random-search baseline: ours) never sees the model itself, only a `QueryLedger` around it that
- counts, for every attacked point, the outputs asked for it (a queried row belongs to the
  attacked point nearest to it; a row as near to two points counts for both, so a count is
  never too low), and refuses a call that would take any point past its budget (the attack
  then ends with what it found);
- keeps, per point, the first queried row inside the perturbation budget that the answer
  already showed misclassified: the attacker saw it succeed, so that is its example, whatever
  the library returns.

Adaptive attackers (for defenses whose output changes from query to query or with the batch,
such as UniG) ask differently, at the same budget: `repeats` > 1 answers each query with the
mean of that many (expectation over the defense's randomness, each repeat one query), and
`single_point` sends each point alone instead of inside a batch of others.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from trainables.attacks.base import Attack
from trainables.attacks.norms import project, within_budget
from trainables.attacks.specs import AttackContext, AttackSpec, Impl

__all__ = ["Adaptive", "Averaged", "QueryAttack", "QueryBudgetError", "QueryLedger",
           "SinglePoint", "query_attack"]


class QueryBudgetError(RuntimeError):
    """A query would take an attacked point past its budget: the attack ends there."""


class QueryLedger(nn.Module):
    """The model as a query attacker reaches it: counted, bounded, its successes kept."""

    def __init__(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, *, budget: int,
                 norm: str, eps: float) -> None:
        super().__init__()
        self.model = model
        self.origins, self.labels = x.detach(), y
        self.budget, self.norm, self.eps = budget, norm, eps
        self.counts = torch.zeros(len(x), dtype=torch.long, device=x.device)
        self.found = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.best = x.detach().clone()
        self.calls = 0
        self.rows = 0

    def owners(self, rows: torch.Tensor) -> torch.Tensor:
        """rows x points: which attacked point(s) each row belongs to (the nearest)."""
        distance = torch.cdist(rows.flatten(1).float(), self.origins.flatten(1).float())
        nearest = distance.min(dim=1, keepdim=True).values
        return distance <= nearest + 1e-6

    def forward(self, rows: torch.Tensor) -> torch.Tensor:
        owners = self.owners(rows.detach())
        asked = owners.long().sum(dim=0)
        if bool((self.counts + asked > self.budget).any()):
            raise QueryBudgetError(f"a call of {len(rows)} rows would exceed {self.budget} "
                                   "queries for some point")
        self.counts += asked
        self.calls += 1
        self.rows += len(rows)
        out = self.model(rows)
        self._keep(rows.detach(), owners, out.detach())
        return out

    def _keep(self, rows: torch.Tensor, owners: torch.Tensor, out: torch.Tensor) -> None:
        """The first row of each point that its answer showed misclassified, in budget."""
        point = owners.float().argmax(dim=1)  # one owner per row is enough for this
        fooled = (out.argmax(dim=1) != self.labels[point]) & within_budget(
            rows - self.origins[point], self.norm, self.eps)
        for row in fooled.nonzero().flatten().tolist():
            index = int(point[row])
            if not self.found[index]:
                self.found[index] = True
                self.best[index] = rows[row]


class Averaged(nn.Module):
    """Each query answered with the mean of `repeats` answers (log of the mean
    probabilities): expectation over the defense's randomness (EOT), `repeats` queries each."""

    def __init__(self, model: nn.Module, repeats: int) -> None:
        super().__init__()
        self.model, self.repeats = model, repeats

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        probs = torch.stack([F.softmax(self.model(x), dim=1) for _ in range(self.repeats)])
        return probs.mean(dim=0).clamp_min(1e-12).log()


class SinglePoint(nn.Module):
    """Every point of a call asked alone (a batch of one), never beside other points."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.model(x[i:i + 1]) for i in range(len(x))])


@dataclass(frozen=True)
class Adaptive:
    """How an adaptive attacker asks: `repeats` answers averaged per query, points alone."""

    repeats: int = 1
    single_point: bool = False

    @property
    def name(self) -> str:
        parts = ([f"eot{self.repeats}"] if self.repeats > 1 else []) + (
            ["single"] if self.single_point else [])
        return "+".join(parts) or "plain"

    def wrap(self, model: nn.Module) -> nn.Module:
        if self.single_point:
            model = SinglePoint(model)
        return Averaged(model, self.repeats) if self.repeats > 1 else model


Runner = Callable[[nn.Module, torch.Tensor, torch.Tensor], torch.Tensor]


class QueryAttack(Attack):
    """A query attack: `run(asked, x, y)` attacks the model only through `asked` (the ledger,
    as the adaptive attacker wraps it), within `queries` per point."""

    def __init__(self, spec: AttackSpec, model: nn.Module, budget: float, run: Runner, *,
                 queries: int, adaptive: Adaptive = Adaptive(), name: str | None = None
                 ) -> None:
        super().__init__(spec, model, budget, name=name)
        self.run, self.queries, self.adaptive = run, queries, adaptive
        self.last: QueryLedger | None = None  # the last batch's ledger (its query counts)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        ledger = QueryLedger(self.model, x, y, budget=self.queries, norm=self.norm,
                             eps=self.budget)
        self.last = ledger
        try:
            with torch.no_grad():
                x_adv = self.run(self.adaptive.wrap(ledger), x, y).detach()
        except QueryBudgetError:
            x_adv = x.clone()
        x_adv = (x + project(x_adv - x, self.norm, self.budget)).clamp(0, 1)
        return torch.where(ledger.found.view(-1, *[1] * (x.dim() - 1)), ledger.best, x_adv)


# ---------------------------------------------------------------- the implementations


def _torchattacks(spec: AttackSpec, args: dict[str, Any]) -> Runner:
    import torchattacks as ta

    def run(asked: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.enable_grad():  # torchattacks sets up tensors that ask for gradients
            return getattr(ta, spec.target)(asked, **args)(x, y)
    return run


class _Probabilities(nn.Module):
    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.softmax(self.model(x), dim=1)


def _art(spec: AttackSpec, args: dict[str, Any], num_classes: int) -> Runner:
    from art.attacks import evasion
    from art.estimators.classification import PyTorchClassifier

    def run(asked: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        classifier = PyTorchClassifier(
            _Probabilities(asked), loss=nn.CrossEntropyLoss(), input_shape=tuple(x.shape[1:]),
            nb_classes=num_classes, clip_values=(0.0, 1.0),
            device_type="gpu" if x.is_cuda else "cpu")
        attack = getattr(evasion, spec.target)(classifier, verbose=False, **args)
        onehot = F.one_hot(y, num_classes).cpu().numpy()
        x_adv = attack.generate(x.cpu().numpy().astype(np.float32), y=onehot)
        return torch.from_numpy(x_adv).to(x.device)
    return run


def _vertices(spec: AttackSpec, args: dict[str, Any], eps: float) -> Runner:
    """Random search: a random vertex of the Linf ball (a random direction of the L2 sphere)
    per query, for every point not yet fooled."""
    queries = int(args["queries"])

    def run(asked: nn.Module, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x_adv, alive = x.clone(), torch.ones(len(x), dtype=torch.bool, device=x.device)
        for _ in range(queries):
            index = alive.nonzero().flatten()
            if len(index) == 0:
                break
            delta = torch.empty_like(x[index]).uniform_(-1, 1)
            if spec.norm == "Linf":
                delta = delta.sign() * eps
            else:
                delta = eps * delta / delta.flatten(1).norm(dim=1).view(-1, *[1] * (x.dim() - 1))
            candidate = (x[index] + delta).clamp(0, 1)
            fooled = asked(candidate).argmax(dim=1) != y[index]
            x_adv[index[fooled]] = candidate[fooled]
            alive[index[fooled]] = False
        return x_adv
    return run


def query_attack(spec: AttackSpec, model: nn.Module, ctx: AttackContext, args: dict[str, Any],
                 *, queries: int, adaptive: Adaptive, name: str) -> QueryAttack:
    """The query attack of `spec`'s row, its arguments resolved for `ctx` (whose `queries`
    is what the library may spend per point: the budget over the adaptive repeats)."""
    if spec.impl == Impl.TORCHATTACKS:
        run = _torchattacks(spec, args)
    elif spec.impl == Impl.ART:
        run = _art(spec, args, ctx.num_classes)
    elif spec.impl == Impl.OURS:
        run = _vertices(spec, args, ctx.budget)
    else:
        raise ValueError(f"{spec.name}: {spec.impl} attacks are not query attacks")
    return QueryAttack(spec, model, ctx.budget, run, queries=queries, adaptive=adaptive,
                       name=name)

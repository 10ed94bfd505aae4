"""What every trial of a search shares: data, the frozen teacher, the undefended target model.

Computed once per search (or per standalone trial) and cached on disk keyed by data set,
architecture, seed and training budget, so a second search reuses the trained networks.
"""

from __future__ import annotations

import hashlib
import json
import os
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from trainables.attacks import build_attack
from trainables.attacks.base import Attack
from trainables.config import TrialConfig
from trainables.defense.models import DefendedModel, ModelParts, build_arch
from trainables.errors import ConfigError
from trainables.provenance import source_hash
from trainables.runtime import pinned_threads, resolve_device, seed_everything
from trainables.setting.data import DataSplits, load_dataset
from trainables.setting.setup import Setup, resolve_setup
from trainables.vocab import (
    CRAFT_BATCH,
    PREPARE_THREADS,
    TEACHER_LR,
    TRANSFER_BATCH,
    CraftAgainst,
    Split,
)

__all__ = ["Shared", "cache_root", "prepare_shared"]

CACHE_VERSION = 2  # of the folder's layout; the code that fills it is in the key itself
# what trains the teacher and the target and crafts the transfer sets: the whole package (a
# change anywhere costs one retraining, seconds to a minute) and the numerical packages
_CODE = (("trainables",), ("torch", "numpy", "scipy", "scikit-learn", "mlxtend", "kornia",
                           "torchattacks"))
Log = Callable[[str], None]


@dataclass
class Shared:
    """Prepared once, shipped to every trial (Ray's object store pickles it)."""

    setup: Setup
    data: DataSplits
    teacher: ModelParts
    target: DefendedModel | None = None  # the undefended model: transfer source, surrogate
    # MID's protocol: train-set adversarial examples crafted once on the target,
    # keyed "<attack>@<steps>"
    target_examples: dict[str, torch.Tensor] = field(default_factory=dict)
    # held-out attacks crafted on the target, per split ("val" subset, "test"), per attack
    transfer: dict[str, dict[str, torch.Tensor]] = field(default_factory=dict)
    cache_dir: Path | None = None

    def split(self, name: str, *, samples: int = 0, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The points every trial is scored on: "val" or "test", or a fixed seeded subset of
        `samples` of them (0: all)."""
        x, y = ((self.data.test_x, self.data.test_y) if name == Split.TEST
                else (self.data.val_x, self.data.val_y))
        if samples and samples < len(y):
            keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
            x, y = x[keep[:samples]], y[keep[:samples]]
        return x, y

    def points(self, name: str, config: TrialConfig) -> tuple[torch.Tensor, torch.Tensor]:
        """The points of `config` on split `name`: its eval_samples or test_samples."""
        samples = config.test_samples if name == Split.TEST else config.eval_samples
        return self.split(name, samples=samples, seed=config.data_seed)

    def examples_on_target(self, name: str, config: TrialConfig, log: Log = print
                           ) -> torch.Tensor:
        """Train-set examples of pool attack `name` crafted on the target (computed once)."""
        slot = f"{name}:{config.train_attack_steps}:{config.train_eps_scale:g}"
        if slot not in self.target_examples:
            if self.target is None or self.cache_dir is None:
                raise ConfigError("craft_against=target needs a target model: prepare the "
                                  "shared state with craft_against: target")
            with pinned_threads(PREPARE_THREADS):  # cached: the same whoever crafts it
                self.target_examples[slot] = _target_examples(
                    name, self.target, config, self.setup, self.data, self.cache_dir,
                    resolve_device(config.device), log)
        return self.target_examples[slot]


def cache_root(cache_dir: str | None) -> Path:
    root = cache_dir or os.environ.get("DEFENSE_SEARCH_CACHE") or "~/.cache/defense-search"
    return Path(root).expanduser().resolve()


def _key(config: TrialConfig, setup: Setup, data: DataSplits) -> str:
    ident = {"v": CACHE_VERSION, "dataset": config.dataset, "arch": setup.arch,
             "seed": config.data_seed, "epochs": config.teacher_epochs,
             "batch_size": config.batch_size,  # the teacher's and the target's batches
             "sizes": [len(data.train_y), len(data.val_y), len(data.test_y)],
             "train_sum": float(data.train_x.double().sum()), "code": source_hash(*_CODE)}
    return hashlib.sha256(json.dumps(ident, sort_keys=True).encode()).hexdigest()[:16]


def _save_atomic(obj: object, path: Path) -> None:
    # Concurrent trials may prepare the same entry: write aside, then rename atomically.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(f".{os.getpid()}.tmp")
    torch.save(obj, tmp)
    tmp.replace(path)


def _train(parts: ModelParts, data: DataSplits, *, epochs: int, batch_size: int,
           reconstruct: bool, device: torch.device, seed: int) -> None:
    """Clean training: CE (+ reconstruction MSE for the teacher autoencoder)."""
    seed_everything(seed)
    modules = nn.ModuleList([parts.encoder, parts.head] + ([parts.decoder] if reconstruct else []))
    modules.to(device).train()
    optimizer = torch.optim.Adam(modules.parameters(), lr=TEACHER_LR)
    x_all, y_all = data.train_x.to(device), data.train_y.to(device)
    gen = torch.Generator().manual_seed(seed)
    for _ in range(epochs):
        for idx in torch.randperm(len(y_all), generator=gen).split(batch_size):
            x, y = x_all[idx], y_all[idx]
            z = parts.encoder(x)
            loss = F.cross_entropy(parts.head(z), y)
            if reconstruct:
                loss = loss + F.mse_loss(parts.decoder(z), x)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    optimizer.zero_grad(set_to_none=True)  # no stale .grad shipped to every trial
    modules.eval().cpu().requires_grad_(False)


def _load_or_train(path: Path, parts: ModelParts, train: Callable[[], None], log: Log,
                   what: str) -> None:
    names = ("encoder", "decoder", "head")
    if path.exists():
        state = torch.load(path, map_location="cpu", weights_only=True)
        for name in names:
            getattr(parts, name).load_state_dict(state[name])
        for name in names:
            getattr(parts, name).eval().requires_grad_(False)
        log(f"{what}: loaded from cache {path}")
        return
    start = time.perf_counter()
    train()
    _save_atomic({name: getattr(parts, name).state_dict() for name in names}, path)
    log(f"{what}: trained in {time.perf_counter() - start:.1f}s, cached at {path}")


@torch.no_grad()
def clean_accuracy(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    return float((model(x).argmax(1) == y).float().mean())


def prepare_shared(config: TrialConfig, *, pool_candidates: Sequence[str] = (),
                   log: Log = print) -> Shared:
    """Loads the data and trains (or loads from cache) the teacher, and the target if needed.

    `pool_candidates`: every attack any trial of the search may put in its pool; with
    craft_against=target their train-set examples are crafted once here. Everything it trains
    or crafts is cached, so it runs at PREPARE_THREADS whatever the caller's threads are.
    """
    with pinned_threads(PREPARE_THREADS):
        return _prepare(config, pool_candidates, log)


def _prepare(config: TrialConfig, pool_candidates: Sequence[str], log: Log) -> Shared:
    setup = resolve_setup(config, extra_attacks=pool_candidates)
    data = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.data_seed,
                        download=config.download)
    device = resolve_device(config.device)
    key = _key(config, setup, data)
    root = cache_root(config.cache_dir) / f"{config.dataset}-{setup.arch}-{key}"
    shape, classes = setup.info.image_shape, setup.info.num_classes

    seed_everything(config.data_seed)
    teacher = build_arch(setup.arch, shape, classes)
    _load_or_train(root / "teacher.pt", teacher,
                   lambda: _train(teacher, data, epochs=config.teacher_epochs,
                                  batch_size=config.batch_size, reconstruct=True,
                                  device=device, seed=config.data_seed),
                   log, "teacher")
    teacher_model = DefendedModel(teacher.encoder, teacher.head)
    log(f"teacher clean val accuracy {clean_accuracy(teacher_model, data.val_x, data.val_y):.3f}")
    shared = Shared(setup, data, teacher, cache_dir=root)
    shared.target = _target_model(config, setup, data, root, device, log)
    if config.craft_against == CraftAgainst.TARGET:
        for name in dict.fromkeys((*config.pool, *pool_candidates)):
            shared.examples_on_target(name, config, log)
    for split in ("val", "test"):
        shared.transfer[split] = _transfer_examples(shared, split, config, device, log)
    return shared


def _transfer_examples(shared: Shared, split: str, config: TrialConfig, device: torch.device,
                       log: Log) -> dict[str, torch.Tensor]:
    """The held-out attacks crafted once on the undefended target (MID's transfer protocol)."""
    assert shared.target is not None and shared.cache_dir is not None
    x, y = shared.points(split, config)
    out: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    for name in config.heldout:
        path = shared.cache_dir / f"transfer-{split}-{name}-n{len(y)}-s{config.data_seed}.pt"
        if path.exists():
            out[name] = torch.load(path, map_location="cpu", weights_only=True)
            continue
        model = shared.target.to(device)
        attack = build_attack(name, model, shared.setup.threat,
                             num_classes=shared.setup.info.num_classes, seed=config.data_seed)
        seed_everything(config.data_seed)
        out[name] = torch.cat([_inside(attack, x[i:i + TRANSFER_BATCH].to(device),
                                       y[i:i + TRANSFER_BATCH].to(device)).cpu()
                               for i in range(0, len(y), TRANSFER_BATCH)])
        shared.target.cpu()
        _save_atomic(out[name], path)
    log(f"transfer set ({split}, {len(y)} points): {len(out)} held-out attacks on the target "
        f"in {time.perf_counter() - start:.1f}s")
    return out


def _inside(attack: Attack, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """The attack's examples, with those outside its budget replaced by the clean images (so
    they cannot count as a success)."""
    x_adv = attack(x, y)
    return torch.where(attack.within_budget(x, x_adv).view(-1, 1, 1, 1), x_adv, x)


def _target_model(config: TrialConfig, setup: Setup, data: DataSplits, root: Path,
                  device: torch.device, log: Log) -> DefendedModel:
    seed_everything(config.data_seed + 1)
    parts = build_arch(setup.arch, setup.info.image_shape, setup.info.num_classes)
    _load_or_train(root / "target.pt", parts,
                   lambda: _train(parts, data, epochs=config.teacher_epochs,
                                  batch_size=config.batch_size, reconstruct=False,
                                  device=device, seed=config.data_seed + 1),
                   log, "undefended target")
    return DefendedModel(parts.encoder, parts.head).eval()


def _target_examples(name: str, target: DefendedModel, config: TrialConfig, setup: Setup,
                     data: DataSplits, root: Path, device: torch.device, log: Log
                     ) -> torch.Tensor:
    scale = "" if config.train_eps_scale == 1 else f"-x{config.train_eps_scale:g}"
    path = root / f"pool-{name}-steps{config.train_attack_steps}{scale}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    start = time.perf_counter()
    model = target.to(device)
    attack = build_attack(name, model, setup.threat, num_classes=setup.info.num_classes,
                          train_steps=config.train_attack_steps, seed=config.data_seed,
                          scale=config.train_eps_scale)
    x, y = data.train_x, data.train_y
    out = torch.cat([attack.craft(x[i:i + CRAFT_BATCH].to(device),
                                  y[i:i + CRAFT_BATCH].to(device)).cpu()
                     for i in range(0, len(y), CRAFT_BATCH)])
    target.cpu()
    _save_atomic(out, path)
    log(f"pool {name}: crafted {len(y)} train examples on the target in "
        f"{time.perf_counter() - start:.1f}s")
    return out

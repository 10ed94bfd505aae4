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

from trainables.attacks import attack_spec, bind_attack, check_attack_fits
from trainables.config import TrialConfig
from trainables.data import DatasetInfo, DataSplits, dataset_info, load_dataset
from trainables.errors import ConfigError
from trainables.models import DefendedModel, ModelParts, build_arch, list_archs
from trainables.runtime import resolve_device, seed_everything
from trainables.threat import ThreatModel

__all__ = ["Setup", "Shared", "cache_root", "prepare_shared", "resolve_setup"]

CACHE_VERSION = 1  # bump when teacher/target training changes, to invalidate old caches
Log = Callable[[str], None]


@dataclass(frozen=True)
class Setup:
    """The resolved, validated setting of a trial: data set, architecture, threat model."""

    info: DatasetInfo
    arch: str
    threat: ThreatModel


def resolve_setup(config: TrialConfig, *, extra_attacks: Sequence[str] = (),
                  check_data_dir: bool = True) -> Setup:
    """Checks everything that depends on the data set, without loading any data.

    Raises ConfigError for an unknown architecture, an out-of-range budget, an attack that
    cannot run on this data set, a slow attack in a white-box training pool, or (with
    `check_data_dir`) a data set that needs a data directory it was not given.
    """
    info = dataset_info(config.dataset)
    if info.needs_data_dir and check_data_dir:
        if config.data_dir is None:
            raise ConfigError(f"data set {config.dataset!r} reads its standard files from a data "
                              "directory: pass --data-dir DIR (or set data_dir in the space)")
        if not Path(config.data_dir).is_dir():
            raise ConfigError(f"data_dir {config.data_dir!r} does not exist")
    arch = info.default_arch if config.arch == "auto" else config.arch
    if arch not in list_archs():
        raise ConfigError(f"arch {arch!r} is unknown; choose auto or one of {list_archs()}")
    threat = info.threat_model.merged(config.threat_model or {})
    threat.validate(info.image_shape)
    channels = info.image_shape[0]
    for name in (*config.pool, *config.heldout, *config.sealed, *extra_attacks):
        check_attack_fits(name, channels=channels, num_classes=info.num_classes, threat=threat,
                          dataset=config.dataset)
    if config.craft_against == "student":
        slow = [name for name in (*config.pool, *extra_attacks) if attack_spec(name).heavy]
        if slow:
            raise ConfigError(
                f"pool attack(s) {slow} are too slow to craft against the student on every "
                "batch; move them to heldout/sealed, or set craft_against: target (crafted once "
                "on the fixed target model)")
    return Setup(info, arch, threat)


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

    def split(self, name: str, *, eval_samples: int = 0, seed: int = 0
              ) -> tuple[torch.Tensor, torch.Tensor]:
        """The points every trial is scored on: a fixed seeded subset of "val", or "test"."""
        if name == "test":
            return self.data.test_x, self.data.test_y
        x, y = self.data.val_x, self.data.val_y
        if eval_samples and eval_samples < len(y):
            keep = torch.randperm(len(y), generator=torch.Generator().manual_seed(seed))
            x, y = x[keep[:eval_samples]], y[keep[:eval_samples]]
        return x, y

    def examples_on_target(self, name: str, config: TrialConfig, log: Log = print
                           ) -> torch.Tensor:
        """Train-set examples of pool attack `name` crafted on the target (computed once)."""
        slot = f"{name}@{config.train_attack_steps}"
        if slot not in self.target_examples:
            if self.target is None or self.cache_dir is None:
                raise ConfigError("craft_against=target needs a target model: prepare the "
                                  "shared state with craft_against: target")
            self.target_examples[slot] = _target_examples(
                name, self.target, config, self.setup, self.data, self.cache_dir,
                resolve_device(config.device), log)
        return self.target_examples[slot]


def cache_root(cache_dir: str | None) -> Path:
    root = cache_dir or os.environ.get("DEFENSE_SEARCH_CACHE") or "~/.cache/defense-search"
    return Path(root).expanduser().resolve()


def _key(config: TrialConfig, setup: Setup, data: DataSplits) -> str:
    ident = {"v": CACHE_VERSION, "dataset": config.dataset, "arch": setup.arch,
             "seed": config.seed, "epochs": config.teacher_epochs,
             "sizes": [len(data.train_y), len(data.val_y), len(data.test_y)],
             "train_sum": float(data.train_x.double().sum())}
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
    optimizer = torch.optim.Adam(modules.parameters(), lr=1e-3)
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
    craft_against=target their train-set examples are crafted once here.
    """
    setup = resolve_setup(config, extra_attacks=pool_candidates)
    data = load_dataset(config.dataset, data_dir=config.data_dir, seed=config.seed,
                        download=config.download)
    device = resolve_device(config.device)
    key = _key(config, setup, data)
    root = cache_root(config.cache_dir) / f"{config.dataset}-{setup.arch}-{key}"
    shape, classes = setup.info.image_shape, setup.info.num_classes

    seed_everything(config.seed)
    teacher = build_arch(setup.arch, shape, classes)
    _load_or_train(root / "teacher.pt", teacher,
                   lambda: _train(teacher, data, epochs=config.teacher_epochs,
                                  batch_size=config.batch_size, reconstruct=True,
                                  device=device, seed=config.seed),
                   log, "teacher")
    teacher_model = DefendedModel(teacher.encoder, teacher.head)
    log(f"teacher clean val accuracy {clean_accuracy(teacher_model, data.val_x, data.val_y):.3f}")
    shared = Shared(setup, data, teacher, cache_dir=root)
    shared.target = _target_model(config, setup, data, root, device, log)
    if config.craft_against == "target":
        for name in dict.fromkeys((*config.pool, *pool_candidates)):
            shared.examples_on_target(name, config, log)
    for split in ("val", "test"):
        shared.transfer[split] = _transfer_examples(shared, split, config, device, log)
    return shared


def _transfer_examples(shared: Shared, split: str, config: TrialConfig, device: torch.device,
                       log: Log) -> dict[str, torch.Tensor]:
    """The held-out attacks crafted once on the undefended target (MID's transfer protocol)."""
    assert shared.target is not None and shared.cache_dir is not None
    x, y = shared.split(split, eval_samples=config.eval_samples, seed=config.seed)
    out: dict[str, torch.Tensor] = {}
    start = time.perf_counter()
    for name in config.heldout:
        path = shared.cache_dir / f"transfer-{split}-{name}-n{len(y)}-s{config.seed}.pt"
        if path.exists():
            out[name] = torch.load(path, map_location="cpu", weights_only=True)
            continue
        model = shared.target.to(device)
        attack = bind_attack(name, model, shared.setup.threat,
                             num_classes=shared.setup.info.num_classes, seed=config.seed)
        seed_everything(config.seed)
        out[name] = torch.cat([attack(x[i:i + 256].to(device), y[i:i + 256].to(device)).cpu()
                               for i in range(0, len(y), 256)])
        shared.target.cpu()
        _save_atomic(out[name], path)
    log(f"transfer set ({split}, {len(y)} points): {len(out)} held-out attacks on the target "
        f"in {time.perf_counter() - start:.1f}s")
    return out


def _target_model(config: TrialConfig, setup: Setup, data: DataSplits, root: Path,
                  device: torch.device, log: Log) -> DefendedModel:
    seed_everything(config.seed + 1)
    parts = build_arch(setup.arch, setup.info.image_shape, setup.info.num_classes)
    _load_or_train(root / "target.pt", parts,
                   lambda: _train(parts, data, epochs=config.teacher_epochs,
                                  batch_size=config.batch_size, reconstruct=False,
                                  device=device, seed=config.seed + 1),
                   log, "undefended target")
    return DefendedModel(parts.encoder, parts.head).eval()


def _target_examples(name: str, target: DefendedModel, config: TrialConfig, setup: Setup,
                     data: DataSplits, root: Path, device: torch.device, log: Log
                     ) -> torch.Tensor:
    path = root / f"pool-{name}-steps{config.train_attack_steps}.pt"
    if path.exists():
        return torch.load(path, map_location="cpu", weights_only=True)
    start = time.perf_counter()
    model = target.to(device)
    attack = bind_attack(name, model, setup.threat, num_classes=setup.info.num_classes,
                         train_steps=config.train_attack_steps, seed=config.seed)
    x, y = data.train_x, data.train_y
    out = torch.cat([attack.craft(x[i:i + 512].to(device), y[i:i + 512].to(device)).cpu()
                     for i in range(0, len(y), 512)])
    target.cpu()
    _save_atomic(out, path)
    log(f"pool {name}: crafted {len(y)} train examples on the target in "
        f"{time.perf_counter() - start:.1f}s")
    return out

"""The setting of a trial, checked without loading data: data set facts, architecture, threat
model, and whether every attack can run there. Imports nothing heavy (no torch), so a space is
validated before Ray starts and without importing torch.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from trainables.attacks.specs import AttackKind, attack_spec, check_attack_fits
from trainables.attacks.threat import LEVELS, ThreatModel
from trainables.config import TrialConfig
from trainables.errors import ConfigError
from trainables.registry import Registry
from trainables.vocab import Arch, CraftAgainst, Norm

__all__ = ["ARCHITECTURES", "DEFAULT_BUDGETS", "DEFAULT_LEVELS", "DatasetInfo", "Setup",
           "dataset_info", "list_datasets", "resolve_setup"]

ARCHITECTURES = tuple(a.value for a in Arch)  # what trainables/defense/models.py builds

# Default threat models: budgets per data set (pixels in [0, 1]; L0 counts pixel positions)
PRIMARY_NORM = Norm.LINF
DEFAULT_BUDGETS: dict[str, dict[str, float]] = {
    "digits": {"Linf": 0.2, "L2": 1.0, "L1": 4.0, "L0": 4},
    "mnist5k": {"Linf": 0.3, "L2": 2.0, "L1": 10.0, "L0": 10},
    "mnist": {"Linf": 0.3, "L2": 2.0, "L1": 10.0, "L0": 10},
    "fashion_mnist": {"Linf": 0.1, "L2": 1.5, "L1": 10.0, "L0": 10},
    "cifar10": {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0, "L0": 10},
    "svhn": {"Linf": 8 / 255, "L2": 0.5, "L1": 12.0, "L0": 10},
}


# Non-Lp families' budgets per level (unit per family: trainables/attacks/unforeseen.py),
# calibrated by bench/calibrate_unforeseen.py so that at medium a standard model loses most of
# its accuracy while a person still reads the digit (README: "Unforeseen attacks").
_LEVELS_8PX = {  # digits, 8x8: Blur means little at this size (see the README)
    "Spatial": (10, 20, 30), "Flow": (0.15, 0.25, 0.4), "Elastic": (0.07, 0.12, 0.2),
    "JPEG": (0.4, 0.8, 1.5), "Contrast": (0.25, 0.5, 0.8), "Fog": (0.2, 0.4, 0.7),
    "Snow": (0.25, 0.5, 0.8), "Blur": (0.5, 0.8, 1.0), "Gabor": (0.2, 0.35, 0.5),
    "Whirlpool": (0.5, 1.0, 1.5), "Glitch": (0.5, 1.0, 2.0), "Prison": (0.3, 0.5, 0.8),
    "Perceptual": (0.15, 0.3, 0.5)}
_LEVELS_28PX = {  # mnist5k, mnist, fashion_mnist: 28x28
    "Spatial": (10, 20, 30), "Flow": (0.3, 0.5, 0.8), "Elastic": (0.07, 0.12, 0.2),
    "JPEG": (0.4, 0.8, 1.5), "Contrast": (0.4, 0.8, 1.2), "Fog": (0.3, 0.5, 0.8),
    "Snow": (0.4, 0.7, 1.0), "Blur": (0.6, 0.9, 1.0), "Gabor": (0.2, 0.35, 0.5),
    "Whirlpool": (0.5, 1.0, 1.5), "Glitch": (1.5, 3.0, 5.0), "Prison": (0.4, 0.6, 0.8),
    "Perceptual": (0.15, 0.3, 0.5)}
# cifar10, svhn (32x32 RGB): not calibrated here (no CIFAR files offline); scaled from the 28x28
# levels toward ImageNet-UA's CIFAR-10 ones (JPEG 1/255..6/255 per coefficient, Elastic 0.1..0.5)
_LEVELS_32PX_RGB = {**_LEVELS_28PX, "JPEG": (0.1, 0.25, 0.5), "Gabor": (0.02, 0.04, 0.08),
                    "Snow": (0.2, 0.35, 0.5), "Fog": (0.2, 0.3, 0.5)}
DEFAULT_LEVELS: dict[str, dict[str, tuple[float, float, float]]] = {
    "digits": _LEVELS_8PX, "mnist5k": _LEVELS_28PX, "mnist": _LEVELS_28PX,
    "fashion_mnist": _LEVELS_28PX, "cifar10": _LEVELS_32PX_RGB, "svhn": _LEVELS_32PX_RGB}


@dataclass(frozen=True)
class DatasetInfo:
    """Static facts about a data set, known without reading any file."""

    name: str
    image_shape: tuple[int, int, int]  # (C, H, W)
    num_classes: int
    threat_model: ThreatModel
    default_arch: str
    needs_data_dir: bool
    # Sets without an official test split carve val and test out of one pool: as much as its
    # size allows, since a 95% interval on n points is about +-1/sqrt(n) wide (digits: about
    # 450 points each, +-4.5 points; mnist5k: 1000 and 1500); the others keep their official
    # test set and carve val out of the official train set.
    val_fraction: float = 0.10
    test_fraction: float = 0.0


def _info(name: str, shape: tuple[int, int, int], arch: str, *, needs_dir: bool,
          val: float = 0.10, test: float = 0.0) -> DatasetInfo:
    levels = {family: dict(zip(LEVELS, budgets, strict=True))
              for family, budgets in DEFAULT_LEVELS[name].items()}
    threat = ThreatModel(PRIMARY_NORM, dict(DEFAULT_BUDGETS[name]), levels)
    return DatasetInfo(name, shape, 10, threat, arch, needs_dir, val, test)


_DATASETS: Registry[DatasetInfo] = Registry("dataset")
for _entry in (
    _info("digits", (1, 8, 8), "small_cnn", needs_dir=False, val=0.25, test=0.25),
    _info("mnist5k", (1, 28, 28), "small_cnn", needs_dir=False, val=0.2, test=0.3),
    _info("mnist", (1, 28, 28), "small_cnn", needs_dir=True),
    _info("fashion_mnist", (1, 28, 28), "small_cnn", needs_dir=True),
    _info("cifar10", (3, 32, 32), "resnet", needs_dir=True),
    _info("svhn", (3, 32, 32), "resnet", needs_dir=True),
):
    _DATASETS.add(_entry.name, _entry)


def list_datasets() -> list[str]:
    """Names of every registered data set."""
    return _DATASETS.names()


def dataset_info(name: str) -> DatasetInfo:
    """Static facts about data set `name`; reads no file. Unknown names raise ConfigError."""
    return _DATASETS.get(name)


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
    if arch not in ARCHITECTURES:
        raise ConfigError(f"arch {arch!r} is unknown; choose auto or one of "
                          f"{list(ARCHITECTURES)}")
    threat = info.threat_model.merged(config.threat_model or {})
    unknown = sorted(set(threat.levels) - set(info.threat_model.levels))
    if unknown:
        raise ConfigError(f"threat_model.levels.{unknown[0]}: there is no attack family "
                          f"{unknown[0]!r} with levels; choose from "
                          f"{', '.join(sorted(info.threat_model.levels))}")
    threat.validate(info.image_shape)
    channels = info.image_shape[0]
    for name in (*config.pool, *config.heldout, *config.sealed, *extra_attacks):
        check_attack_fits(name, channels=channels, num_classes=info.num_classes, threat=threat,
                          dataset=config.dataset)
    _check_perceptual(config)
    if config.craft_against == CraftAgainst.STUDENT:
        slow = [name for name in (*config.pool, *extra_attacks) if attack_spec(name).heavy]
        if slow:
            raise ConfigError(
                f"pool attack(s) {slow} are too slow to craft against the student on every "
                "batch; move them to heldout/sealed, or set craft_against: target (crafted once "
                "on the fixed target model)")
    return Setup(info, arch, threat)


def _check_perceptual(config: TrialConfig) -> None:
    """The perceptual attack measures its bound with the trial's teacher encoder: it can train
    a student (a pool attack crafted against it), nothing else has that teacher."""
    scored = [n for n in (*config.heldout, *config.sealed)
              if attack_spec(n).kind == AttackKind.PERCEPTUAL]
    if scored:
        raise ConfigError(f"{scored} bound the change of the trial's teacher features, so they "
                          "have no teacher to measure with in the held-out or sealed groups: "
                          "use them in the pool only")
    if config.craft_against == CraftAgainst.TARGET and any(
            attack_spec(n).kind == AttackKind.PERCEPTUAL for n in config.pool):
        raise ConfigError("a perceptual pool attack needs the student's teacher to bound it, "
                          "but craft_against: target crafts the pool once on the target: "
                          "set craft_against: student")

"""A trial's vocabulary: its closed choices as enums, the metric keys it reports, its defaults.

Every metric key a trial reports is spelled here once and read through these names (the
search's own words, its tags, artifacts and statuses, are in search/vocab.py). Imports nothing
heavy (no torch), so the space validator can use it.

Metric keys read `split/group/attack/acc` (`val/heldout/Square/acc`) or `split/group/stat`
(`val/heldout/mean_acc`).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "BEST_EPOCH",
    "CHANCE_MARGIN",
    "CLEAN_ACC",
    "CRAFT_BATCH",
    "DIVERGED_LOSS_FACTOR",
    "EPOCH",
    "EPOCH_SECONDS",
    "EPOCH_SEED_STRIDE",
    "FIDELITY_POINTS",
    "FIDELITY_STRENGTH",
    "GROUP_STATS",
    "HELDOUT_FAMILY_MEAN",
    "HELDOUT_MEAN",
    "MASKING",
    "MASKING_ANSWERED",
    "MASKING_ANY",
    "MASKING_DLR_GAP",
    "MASKING_EPS_SWEEP",
    "MASKING_FAMILY_GAP",
    "MASKING_GAP",
    "MASKING_INFORMATIONAL",
    "MASKING_LARGE_EPS_ACC",
    "MASKING_QUERIES",
    "MASKING_REPEATS",
    "MASKING_STEPS_GAP",
    "MASKING_UNBOUNDED_SUCCESS",
    "PREPARE_THREADS",
    "SCORING_VERSION",
    "SEALED_STRENGTH",
    "TEACHER_LR",
    "THREAT_PGD10",
    "TIME_AUTOATTACK",
    "TIME_ELAPSED",
    "TIME_FINAL",
    "TIME_TOTAL",
    "TIME_TRAIN",
    "TRAIN_LOSS",
    "TRANSFER_BATCH",
    "Access",
    "Arch",
    "CraftAgainst",
    "FeatLoss",
    "Group",
    "Level",
    "LrSchedule",
    "MetaOrder",
    "Norm",
    "Optimizer",
    "PclLayers",
    "PoolCombine",
    "Split",
    "Stat",
    "StudentInit",
    "TaskSide",
    "TrainOn",
    "UniGSize",
    "attack_metric",
    "group_metric",
    "high_key",
    "key_name",
    "low_key",
    "masking_claim_key",
    "time_key",
    "train_key",
]


# ---------------------------------------------------------------- closed vocabularies


class Arch(StrEnum):
    """The architectures trainables/defense/models.py builds."""

    SMALL_CNN = "small_cnn"
    WIDE_CNN = "wide_cnn"  # small_cnn at twice the width: the capacity lever
    RESNET = "resnet"


class Norm(StrEnum):
    LINF = "Linf"
    L2 = "L2"
    L1 = "L1"
    L0 = "L0"


class Access(StrEnum):
    """What an attacker needs from the model: its gradients, its output scores (a query
    budget), its labels only, or nothing (transferred from another model). A space's
    objective assumes one (its claim), and each masking check says which claim it judges."""

    WHITE_BOX = "white-box"
    SCORES = "scores"
    DECISIONS = "decisions"
    TRANSFER = "transfer"
    NONE = "none"  # a random corruption: it never looks at the model


class Level(StrEnum):
    """A non-Lp family's distortion level (ImageNet-UA's low / medium / high)."""

    LOW = "low"
    MEDIUM = "medium"
    HIGH = "high"


class UniGSize(StrEnum):
    """UniG's module size: off, one shared 1 x D multiplier, B x D, or B x C x 1 x 1."""

    OFF = "off"
    SHARED = "shared"
    PER_SAMPLE = "per_sample"
    PER_CHANNEL = "per_channel"


class MetaOrder(StrEnum):
    FIRST = "first"
    SECOND = "second"
    OFF = "off"


class TrainOn(StrEnum):
    ADVERSARIAL = "adversarial"
    CLEAN = "clean"  # no pool attack is crafted: the standard-training baseline


class CraftAgainst(StrEnum):
    STUDENT = "student"  # white-box adversarial training
    TARGET = "target"  # MID's protocol: crafted once on a fixed undefended model


class StudentInit(StrEnum):
    TEACHER = "teacher"  # start the student encoder from the teacher's weights
    RANDOM = "random"  # from scratch, as MID does


class FeatLoss(StrEnum):
    KL = "kl"
    MSE = "mse"


class PclLayers(StrEnum):
    PENULTIMATE = "penultimate"
    ENCODER = "encoder"
    BOTH = "both"


class TaskSide(StrEnum):
    """Which tasks of a training step a loss term is computed on."""

    CLEAN = "clean"  # the clean images (include_clean, or clean training)
    ADVERSARIAL = "adversarial"  # each pool attack's examples
    ALL = "all"


class Optimizer(StrEnum):
    ADAM = "adam"
    ADAMW = "adamw"
    SGD = "sgd"


class LrSchedule(StrEnum):
    CONSTANT = "constant"
    COSINE = "cosine"
    PIECEWISE = "piecewise"


class Precision(StrEnum):
    """The arithmetic attacks craft in and training computes in (every verdict is float32's)."""

    FLOAT32 = "float32"
    BFLOAT16 = "bfloat16"
    AUTO = "auto"  # bfloat16 where the device computes it natively, else float32


class EvalLosses(StrEnum):
    """The two passes of every non-Lp gradient attack in an evaluation (validation and final;
    masking.both_losses). CE saturates on a confident model, the margin loss does not, and
    each finds points the other misses, so a score rests on both."""

    CE_MARGIN = "ce-margin"  # CE, then the margin loss at the same iterations on what CE left
    # the margin loss, then CE at half the iterations on what it left: a final evaluation
    # without AutoAttack 1.35-1.37x faster at mnist5k size, family means -0.4 to +0.0 points
    # (docs/speed.md, "Margin first")
    MARGIN_CE = "margin-ce"


class PoolCombine(StrEnum):
    """How a batch's pool attacks become training tasks."""

    EACH = "each"  # one task per pool attack (MID's meta-tasks; averaged without meta step)
    WORST = "worst"  # per sample, the pool example with the highest loss (MSD's "max")


# ---------------------------------------------------------------- metric keys


class Split(StrEnum):
    TRAIN = "train"
    VAL = "val"
    TEST = "test"


class Group(StrEnum):
    CLEAN = "clean"
    POOL = "pool"
    HELDOUT = "heldout"
    SEALED = "sealed"
    TRANSFER = "transfer"  # held-out attacks crafted on the undefended target
    ADAPTIVE = "adaptive"  # attacks adapted to UniG (BPDA, module-free)
    # query attacks asked adaptively (repeats averaged, points alone), AND-ed with the plain
    ADAPTIVE_QUERY = "adaptive_query"
    WHITE_BOX = "white_box"  # a query space's white-box reference attacks, beside its own
    OUTPUT = "output"  # how much the defense changes the served output on clean inputs
    AUTOATTACK = "autoattack"


class Stat(StrEnum):
    ACC = "acc"
    MEAN = "mean_acc"  # mean over the group's attacks
    WORST = "worst_acc"  # the worst single attack
    UNION = "union_acc"  # per-sample AND over the group's attacks
    # ImageNet-UA's score: mean over the group's threat models (families) of the accuracy
    # under each, a family's accuracy being the per-sample AND over its attacks at medium
    # distortion (Lp attacks: their eps)
    FAMILY_MEAN = "family_mean_acc"
    # the output-change cost against the undefended model, on clean inputs
    PROB_CHANGE = "prob_change"  # mean total-variation distance of the probabilities
    TOP1_AGREEMENT = "top1_agreement"  # share of points whose top-1 class is the same


GROUP_STATS = (Stat.MEAN, Stat.WORST, Stat.UNION, Stat.FAMILY_MEAN)


def group_metric(split: str, group: str, stat: str = Stat.MEAN) -> str:
    return f"{split}/{group}/{stat}"


def low_key(metric: str) -> str:
    """The lower end of a metric's 95% interval: `val/heldout/mean_acc_lo`."""
    return f"{metric}_lo"


def high_key(metric: str) -> str:
    return f"{metric}_hi"


def key_name(attack: str) -> str:
    """An attack's name inside an MLflow key: MLflow allows no `@`, so `Elastic@medium` reads
    `Elastic.medium` there."""
    return attack.replace("@", ".")


def attack_metric(split: str, group: str, attack: str) -> str:
    """`val/heldout/Elastic.medium/acc`. A family's accuracy has the family's name in the
    attack's place (`val/heldout/Linf/acc`)."""
    return f"{split}/{group}/{key_name(attack)}/{Stat.ACC}"


CLEAN_ACC = group_metric(Split.VAL, Group.CLEAN, Stat.ACC)
HELDOUT_MEAN = group_metric(Split.VAL, Group.HELDOUT, Stat.MEAN)
HELDOUT_FAMILY_MEAN = group_metric(Split.VAL, Group.HELDOUT, Stat.FAMILY_MEAN)
MASKING = "masking"
MASKING_ANY = f"{MASKING}/any"
MASKING_ANSWERED = f"{MASKING}/answered"  # 1: a stronger attack's flags met by both_losses
# How held-out and sealed attacks are scored; a search's or lever table's objective values
# carry over (warm start) only at the same version. 1: non-Lp attacks on CE and margin loss.
SCORING_VERSION = 1
# PGD-10 accuracy at the threat model's budget on the masking points: the eps-sweep check
# reports it at every evaluation, so it is the search's cheap reading of Lp robustness
THREAT_PGD10 = f"{MASKING}/evidence/pgd10_acc_eps_x1"


def masking_claim_key(access: str) -> str:
    """1 when a raised masking flag invalidates a claim of this access: `masking/claim/scores`
    (what zeroes the objective of a space that claims it)."""
    return f"{MASKING}/claim/{access}"


EPOCH = "epoch"  # the epoch an evaluation was made after (the step of its metrics)


def train_key(part: str) -> str:
    """A training-loss part averaged over an epoch: `train/loss`, `train/ce`."""
    return f"{Split.TRAIN}/{part}"


TRAIN_LOSS = train_key("loss")
EPOCH_SECONDS = train_key("epoch_seconds")
BEST_EPOCH = train_key("best_epoch")  # early stopping: the epoch whose weights were kept


def time_key(*parts: str) -> str:
    """Seconds spent: `time/craft_s`, `time/val/heldout/Elastic.medium_s`."""
    return "time/" + "/".join(parts) + "_s"


TIME_ELAPSED = time_key("elapsed")  # since the trial started, at an evaluation
TIME_TOTAL = time_key("total")  # the whole trial
TIME_TRAIN = time_key("train")  # training a recipe again (the final comparison)
TIME_FINAL = time_key("final")  # a model's final evaluation
TIME_AUTOATTACK = time_key("autoattack")  # AutoAttack, inside the final evaluation
# What an evaluation scored: how many points, at what attack strength
FIDELITY_POINTS = "fidelity/points"
FIDELITY_STRENGTH = "fidelity/strength"


# ---------------------------------------------------------------- defaults and thresholds

SEALED_STRENGTH = 2.0  # the final report runs attacks at twice their iterations and queries
TEACHER_LR = 1e-3  # Adam, for the teacher and the undefended target (clean training)
# torch's CPU threads while the shared models are trained and the transfer sets crafted: float
# sums split by thread count, so without a pin the cached teacher was whatever the first process
# to fill the cache had (1 thread in bench/demo.py's reference step, which ran before every
# figure's search; 2 in `make demo`'s driver on this machine) and every later number moved with it
PREPARE_THREADS = 1
CRAFT_BATCH = 512  # batch size when crafting train-set examples on the target once
TRANSFER_BATCH = 256  # batch size when crafting the transfer sets on the target
EPOCH_SEED_STRIDE = 1000  # epoch e of seed s shuffles with seed s * 1000 + e

# A trial diverged: its training loss not finite or this many times its first epoch's, or
# its clean accuracy fell to chance (within this margin)
DIVERGED_LOSS_FACTOR = 1e4
CHANCE_MARGIN = 0.02

# Gradient-masking thresholds (robustness-notes 1.3; two masked toy models flagged, two
# honest ones not)
MASKING_GAP = 0.02  # a weaker attack beating a stronger one by more than this
MASKING_STEPS_GAP = 0.05  # PGD-50 below PGD-10 by more than this: not converged
MASKING_DLR_GAP = 0.10  # DLR loss beating CE by this much: saturated or rescaled logits
MASKING_LARGE_EPS_ACC = 0.05  # at 4x the budget an honest model is (almost) never right
MASKING_UNBOUNDED_SUCCESS = 0.95  # an unbounded CW should flip (almost) every point
MASKING_EPS_SWEEP = (0.5, 1.0, 2.0, 4.0)
# random search over a non-Lp family's latents beating its gradient attack by more than this
# (wider than MASKING_GAP: the honest gap between the two varies by family; see the bench)
MASKING_FAMILY_GAP = 0.05
MASKING_INFORMATIONAL = ("randomized", "backward_in_forward")  # flags that are no masking
# the query-claim checks: Square at this many queries per point, adaptive repeats per query
MASKING_QUERIES = 500
MASKING_REPEATS = 5

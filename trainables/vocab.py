"""The project's vocabulary: closed choices as enums, and every shared name and default.

Metric keys, MLflow tags, artifact file names, trial statuses and default thresholds are
spelled here once and imported wherever they are used. Imports nothing heavy (no torch), so
the space validator can use it.

Metric keys read `split/group/attack/acc` (`val/heldout/Square/acc`) or `split/group/stat`
(`val/heldout/mean_acc`).
"""

from __future__ import annotations

from enum import StrEnum

__all__ = [
    "ARTIFACT",
    "CLEAN_ACC",
    "GROUP_STATS",
    "HELDOUT_MEAN",
    "MASKING_ANY",
    "OBJECTIVE",
    "TAG",
    "CraftAgainst",
    "FeatLoss",
    "Group",
    "Level",
    "MetaOrder",
    "Mode",
    "Norm",
    "PclLayers",
    "PoolCombine",
    "Scheduler",
    "SearchAlg",
    "Split",
    "Stat",
    "StudentInit",
    "TrainOn",
    "TrialStatus",
    "UniGSize",
    "attack_metric",
    "group_metric",
    "high_key",
    "key_name",
    "low_key",
]


# ---------------------------------------------------------------- closed vocabularies


class Norm(StrEnum):
    LINF = "Linf"
    L2 = "L2"
    L1 = "L1"
    L0 = "L0"


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


class PoolCombine(StrEnum):
    """How a batch's pool attacks become training tasks."""

    EACH = "each"  # one task per pool attack (MID's meta-tasks; averaged without meta step)
    WORST = "worst"  # per sample, the pool example with the highest loss (MSD's "max")


class SearchAlg(StrEnum):
    TPE = "tpe"
    RANDOM = "random"
    NSGA2 = "nsga2"


class Scheduler(StrEnum):
    ASHA = "asha"
    NONE = "none"


class Mode(StrEnum):
    MAX = "max"
    MIN = "min"


class TrialStatus(StrEnum):
    """A child run's fate, in the STATUS tag."""

    RUNNING = "running"
    RETRYING = "retrying"
    COMPLETED = "completed"
    EARLY_STOPPED = "early-stopped"
    FAILED = "failed"
    BASELINE = "baseline"  # a reference recipe trained by `search.sealed --baselines`


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
    BASELINE = "baseline"  # the reference recipe a trial is (trainables/baselines.py)
    VS_BASELINE = "vs_best_baseline"  # a trial's objective against the best baseline's
    FAILURE = "failure"  # why a trial failed: exception type and message
    RESTARTED = "restarted"  # a trial whose checkpoint could not be read started over
    TRANSFER = "transfer"  # held-out attacks crafted on the undefended target
    ADAPTIVE = "adaptive"  # attacks adapted to UniG (BPDA, module-free)
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
# What Tune optimises: the space's objective, zeroed for a trial that raised a masking flag.
OBJECTIVE = "val/objective"
POINTS = "points"  # a result's per-point values of its summary metrics: points/<metric>
# a trial that failed for a reason a retry would meet again reports it (and is not retried)
FAILURE_REASON = "failure/reason"
FAILURE_LINES = "failure/last_lines"
ORPHANED = "orphaned"  # Optuna user attribute of a trial a killed driver asked for, never ran
MASKING = "masking"
MASKING_ANY = f"{MASKING}/any"
# Metric namespaces a trial reports (what MLflow keeps; Tune's own keys are left out)
METRIC_PREFIXES = ("val/", "train/", "test/", "time/", "masking/", "fidelity/")


# ---------------------------------------------------------------- MLflow tags and artifacts


class TAG:
    STATUS = "trial_status"
    MASKING_FLAGS = "masking_flags"
    TRIAL_ID = "ray_trial_id"
    PARENT = "mlflow.parentRunId"
    SEARCH_NAME = "search_name"
    SPACE = "space"
    EVALUATIONS = "evaluations"
    BEST_RUN = "best_run"
    SEALED = "sealed"
    BASELINE = "baseline"  # the reference recipe a trial is (trainables/baselines.py)
    VS_BASELINE = "vs_best_baseline"  # a trial's objective against the best baseline's
    FAILURE = "failure"  # why a trial failed: exception type and message
    RESTARTED = "restarted"  # a trial whose checkpoint could not be read started over


class ARTIFACT:
    CONFIG = "config.json"  # a trial's resolved record: config + searched values
    ROBUSTNESS = "robustness.csv"
    MASKING = "masking.json"
    FAILURE = "failure.txt"  # a failed trial's error and its last lines
    MODEL = "model.pt"  # a trial's final defended model, in its last checkpoint
    STATE = "state.pt"  # a trial's resumable state, in every checkpoint
    LEADERBOARD = "leaderboard.csv"
    SEALED = "sealed.csv"  # the final comparison, one row per recipe
    FINAL_TABLE = "final.md"  # ... as the table a person reads
    FINAL_JSON = "final.json"
    BEST_CONFIG = "best_config.yaml"
    BEST_MODEL = "best_model.pt"
    SPACE = "space.yaml"
    SEARCH_INFO = "search.json"
    OPTUNA_DB = "optuna.db"
    MLFLOW_JOURNAL = "mlflow-pending.jsonl"  # MLflow writes queued while the server was away



# ---------------------------------------------------------------- defaults and thresholds

SEALED_STRENGTH = 2.0  # the final report runs attacks at twice their iterations and queries
FINAL_SEEDS = 3  # the final comparison trains every recipe with this many seeds
TRACKING_OUTAGE_S = 300.0  # how long a finished search waits for a lost tracking server
TEACHER_LR = 1e-3  # Adam, for the teacher and the undefended target (clean training)
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

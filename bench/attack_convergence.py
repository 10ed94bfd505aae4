"""How strong must a held-out attack be? Each trial of a kept search, its held-out non-Lp
attacks on the validation points as a chain of ever stronger attacks, each AND-ed with the
ones before (a point stays robust only if every attack so far failed), with the family mean
after each stage and the seconds each stage cost.

    python bench/attack_convergence.py RESULTS_FOLDER 1,3,15
    python bench/attack_convergence.py RESULTS_FOLDER 1,3 --stages ce:1 margin:1 ce:5 margin:5

RESULTS_FOLDER is a search's Ray results folder (`<keep>/ray_results/<name>`, from
`bench/demo.py --keep` or `search.run`); each trial is read back from its last checkpoint.
A stage `loss:k` is the family's gradient attack on that loss at k x its iterations. One
thread, the trial's seed; what it prints is in docs/results.md ("The held-out attacks had not
converged").
"""

from __future__ import annotations

import argparse
import pickle
import time
from pathlib import Path

import torch

from trainables.attacks import AttackKind, attack_spec, build_attack
from trainables.config import Fidelity, TrialConfig
from trainables.defense.models import DefendedModel
from trainables.scoring import final
from trainables.scoring.evaluate import clean_correct, robust_mask
from trainables.setting.prepare import Shared, prepare_shared
from trainables.train import _prepare
from trainables.vocab import SEALED_STRENGTH, Split


def _model(folder: Path, shared: Shared | None) -> tuple[DefendedModel, TrialConfig, Shared]:
    with (folder / "params.pkl").open("rb") as handle:
        record = pickle.load(handle)["trial"]
    config: TrialConfig = record.config.replace(threads=1, device="cpu")
    shared = shared or prepare_shared(config, log=lambda _: None)
    state = torch.load(sorted(folder.glob("checkpoint_*/state.pt"))[-1], map_location="cpu",
                       weights_only=False)  # our own checkpoint: RNG states and tuples
    model = _prepare(config, Fidelity(), shared, None, state, lambda _: None).defense.model
    return model.eval(), config, shared


def kept_trial_on_test_points(
        description: str) -> tuple[argparse.Namespace, DefendedModel, TrialConfig, Shared]:
    """The arguments `RESULTS TRIAL --points --repeats` of a benchmark that times a kept trial's
    final evaluation, and that trial's model read back on `--points` test points (1 thread,
    no transfer group: it is crafted on all test points, which is not what is timed)."""
    p = argparse.ArgumentParser(description=description)
    p.add_argument("results", type=Path)
    p.add_argument("trial", type=int)
    p.add_argument("--points", type=int, default=300)
    p.add_argument("--repeats", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(1)
    folder = next(args.results.glob(f"train_recipe_*_{args.trial}_*"))
    model, config, shared = _model(folder, None)
    shared.transfer.pop("test", None)
    return args, model, config.replace(test_samples=args.points), shared


def timed_final_evaluation(model: DefendedModel, shared: Shared, config: TrialConfig
                           ) -> tuple[float, dict[str, float]]:
    """Seconds and metrics of a final evaluation as those benchmarks time it (sealed strength,
    no AutoAttack, quiet); `timed_final_header` says so in one line."""
    start = time.perf_counter()
    metrics = final.final_evaluation(model, shared, config, strength=SEALED_STRENGTH,
                                     autoattack=False, log=lambda _: None).metrics
    return time.perf_counter() - start, metrics


def timed_final_header(args: argparse.Namespace) -> str:
    return (f"trial {args.trial}, {args.points} test points, strength {SEALED_STRENGTH:g}, "
            "no AutoAttack, 1 thread")


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("results", type=Path)
    p.add_argument("trials", help="trial numbers, comma-separated (1 = t01)")
    p.add_argument("--stages", nargs="+", default=["ce:1", "margin:1", "ce:2", "margin:2",
                                                   "margin:5"])
    args = p.parse_args()
    stages = [(loss, float(k)) for loss, k in (s.split(":") for s in args.stages)]
    torch.set_num_threads(1)
    shared = None
    print(f"held-out family mean on the validation points, cumulative over {args.stages}")
    for number in args.trials.split(","):
        folder = next(args.results.glob(f"train_recipe_*_{int(number)}_*"))
        model, config, shared = _model(folder, shared)
        x, y = shared.points(Split.VAL, config)
        correct = clean_correct(model, x, y, 256)
        families: dict[str, list[float]] = {}
        seconds = [0.0] * len(stages)
        for name in config.heldout:
            if attack_spec(name).kind != AttackKind.TRANSFORM:
                continue
            mask, accs = correct, []
            for i, (loss, k) in enumerate(stages):
                start = time.perf_counter()
                attack = build_attack(name, model, shared.setup.threat, seed=config.seed,
                                      num_classes=shared.setup.info.num_classes, strength=k,
                                      loss=loss)
                mask = robust_mask(model, attack, x, y, mask, batch_size=256, seed=config.seed,
                                   stream=f"{name}/{k:g}/{loss}")
                seconds[i] += time.perf_counter() - start
                accs.append(float(mask.float().mean()))
            families[name.split("@")[0]] = accs
        means = [sum(v[i] for v in families.values()) / len(families)
                 for i in range(len(stages))]
        print(f"t{int(number):02d}: " + ", ".join(
            f"&{loss}x{k:g} {m:.3f} ({s:.0f}s)" for (loss, k), m, s
            in zip(stages, means, seconds, strict=True))
            + " | " + " ".join(f"{f} " + "/".join(f"{a:.3f}" for a in v)
                               for f, v in families.items()), flush=True)


if __name__ == "__main__":
    main()

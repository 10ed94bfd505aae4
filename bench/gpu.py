"""The `paper` trial on CIFAR-shaped synthetic data: training and evaluation speed, GPU sharing,
and a cost model in GPU-hours per paper trial and per paper search.

    python bench/gpu.py                        # paper scale, on the GPU if there is one
    python bench/gpu.py --tiny --device cpu    # the same code at toy size (what CI runs)

1. One trial of `paper`'s default recipe (ResNet, 10-step pool attacks, the meta step, UniG)
   for one epoch on `--train` synthetic 3x32x32 images, then one evaluation on `--points`
   validation points and the sealed evaluation (+ AutoAttack) on `--points` test points:
   images per second of training (crafting + step), seconds per point of evaluation.
2. 1, 2 and 4 such trials at once sharing the device (one process each): total images per
   second and, on an NVIDIA GPU, the busy fraction nvidia-smi reports while they run.
3. The cost model: those measured rates times `paper`'s own sizes (45,000 training images,
   its epochs, evaluations, validation and test points, ASHA's rungs, the final comparison)
   give device-hours per trial and per search.

Synthetic images make the data set's files unnecessary; the timings do not depend on pixels.
"""

from __future__ import annotations

import argparse
import multiprocessing
import shutil
import statistics
import subprocess
import threading
import time
from typing import Any

import torch

import spaces
from trainables.config import TrialConfig
from trainables.defense.models import build_arch
from trainables.setting.data import DataSplits
from trainables.setting.prepare import Shared
from trainables.setting.setup import dataset_info, resolve_setup

PAPER_TRAIN = 45_000  # CIFAR-10's training images less the validation split


def synthetic_shared(config: TrialConfig, *, train: int, points: int) -> Shared:
    info = dataset_info(config.dataset)
    generator = torch.Generator().manual_seed(0)

    def images(count: int) -> tuple[torch.Tensor, torch.Tensor]:
        return (torch.rand((count, *info.image_shape), generator=generator),
                torch.randint(0, info.num_classes, (count,), generator=generator))

    data = DataSplits(info, *images(train), *images(points), *images(points))
    setup = resolve_setup(config, check_data_dir=False)
    teacher = build_arch(setup.arch, info.image_shape, info.num_classes)
    return Shared(setup, data, teacher)


def one_trial(space_name: str, overrides: list[str], device: str, train: int, points: int,
              sealed: bool, *, masking: bool = True) -> dict[str, float]:
    """One epoch, one evaluation (and the sealed evaluation): the phase times; `masking`: the
    gradient-masking checks run in the evaluation, on up to 64 of the points."""
    from trainables import train as trial
    from trainables.scoring.final import final_evaluation

    # random labels leave nothing to learn: the chance-accuracy stop would end a timing run
    trial._check_clean = lambda *_: None  # type: ignore[assignment]
    space = spaces.load(space_name, overrides)
    config = space.trial_config(device=device, threads=1 if device == "cpu" else 0,
                                epochs=1, eval_every=1, eval_samples=points,
                                test_samples=points, autoattack_samples=min(points, 100),
                                masking_samples=min(points, 64) if masking else 0)
    shared = synthetic_shared(config, train=train, points=points)
    start = time.perf_counter()
    result = trial.run_trial(config, fidelity=space.fidelity, shared=shared, log=lambda _: None)
    if sealed:
        result.metrics.update(final_evaluation(result.model, shared, config,
                                               log=lambda _: None).metrics)
    if torch.cuda.is_available():
        torch.cuda.synchronize()
    metrics = dict(result.metrics)
    metrics["wall_s"] = time.perf_counter() - start
    metrics["train_images"] = float(train)
    return metrics


class BusySampler:
    """nvidia-smi's utilisation.gpu sampled every 0.2 s while a block runs (None: no GPU)."""

    def __init__(self) -> None:
        self.values: list[float] = []
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.available = shutil.which("nvidia-smi") is not None and torch.cuda.is_available()

    def __enter__(self) -> BusySampler:
        if self.available:
            self._thread = threading.Thread(target=self._run, daemon=True)
            self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            out = subprocess.run(["nvidia-smi", "--query-gpu=utilization.gpu",
                                  "--format=csv,noheader,nounits", "-i", "0"],
                                 capture_output=True, text=True)
            if out.returncode == 0 and out.stdout.strip():
                self.values.append(float(out.stdout.split()[0]) / 100)
            self._stop.wait(0.2)

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    @property
    def busy(self) -> float | None:
        return statistics.fmean(self.values) if self.values else None


def sharing(args: argparse.Namespace, device: str, count: int) -> tuple[float, float | None]:
    """(total training images per second, busy fraction) with `count` trials at once."""
    context = multiprocessing.get_context("spawn")
    with BusySampler() as sampler, context.Pool(count) as pool:
        runs = pool.starmap(one_trial, [(args.space, args.overrides, device, args.train,
                                         args.points, False)] * count)
    # they train at the same time: the sum of their training rates is the device's
    return sum(m["train_images"] / (m["time/craft_s"] + m["time/step_s"]) for m in runs), \
        sampler.busy


def asha_evaluations(space: spaces.Space, trials: int) -> float:
    """Expected evaluations of a search: every trial reaches the first rung, 1/eta of them the
    next, and so on up to max_t (what ASHA's promotion rule gives on average)."""
    settings, top = space.search, space.max_evaluations
    rungs = [settings.grace_period * settings.reduction_factor ** k for k in range(32)
             if settings.grace_period * settings.reduction_factor ** k < top] + [top]
    total, reached, previous = 0.0, float(trials), 0
    for rung in rungs:
        total += reached * (rung - previous)
        previous, reached = rung, reached / settings.reduction_factor
    return total


def cost_model(space: spaces.Space, metrics: dict[str, float], points: int) -> list[str]:
    config = space.trial_config()
    per_image = (metrics["time/craft_s"] + metrics["time/step_s"]) / metrics["train_images"]
    per_eval_point = (metrics["time/eval_attacks_s"] + metrics.get("time/masking_s", 0.0)) \
        / points
    per_sealed_point = metrics.get("time/final_s", 0.0) / points
    eval_points = config.eval_samples or 5000
    test_points = config.test_samples or 10_000
    evaluations = config.epochs // config.eval_every
    train_h = per_image * PAPER_TRAIN * config.epochs / 3600
    eval_h = per_eval_point * eval_points * evaluations / 3600
    sealed_h = per_sealed_point * test_points / 3600
    trial_h = train_h + eval_h
    expected = asha_evaluations(space, space.search.num_samples)
    search_h = expected * (per_image * PAPER_TRAIN * config.eval_every
                           + per_eval_point * eval_points) / 3600
    finalists = 1 + len(space.baselines)
    final_h = finalists * 3 * (trial_h + sealed_h)
    return [
        f"  training        {per_image * 1000:8.2f} ms/image -> {train_h:8.2f} h per trial "
        f"({PAPER_TRAIN} images x {config.epochs} epochs)",
        f"  evaluation      {per_eval_point * 1000:8.2f} ms/point -> {eval_h:8.2f} h per trial "
        f"({evaluations} evaluations x {eval_points} points)",
        f"  sealed + AA     {per_sealed_point * 1000:8.2f} ms/point -> {sealed_h:8.2f} h per "
        f"model ({test_points} test points)",
        f"  one full-length paper trial: {trial_h:.2f} h",
        f"  one paper search: {space.search.num_samples} trials under ASHA ({expected:.0f} "
        f"evaluation periods of {config.eval_every} epochs) {search_h:.1f} h + final "
        f"comparison ({finalists} recipes x 3 seeds) {final_h:.1f} h = {search_h + final_h:.1f} h",
    ]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--space", default="paper")
    p.add_argument("--set", dest="overrides", action="append", default=[])
    p.add_argument("--device", default="auto", help="auto (cuda if any), cuda or cpu")
    p.add_argument("--train", type=int, default=2048, help="synthetic training images")
    p.add_argument("--points", type=int, default=256, help="validation and test points")
    p.add_argument("--sharing", type=int, nargs="*", default=[1, 2, 4],
                   help="trials at once on the device")
    p.add_argument("--tiny", action="store_true",
                   help="toy size (64 images, 16 points, 2-step attacks, batch 32)")
    args = p.parse_args()
    if args.tiny:
        args.train, args.points, args.sharing = 64, 16, [1, 2]
        args.overrides = [*args.overrides, "budget.batch_size=32", "budget.eval_batch_size=16",
                          "fixed.train_attack_steps=2"]
    device = ("cuda" if torch.cuda.is_available() else "cpu") if args.device == "auto" \
        else args.device
    space = spaces.load(args.space, args.overrides)
    name = torch.cuda.get_device_name(0) if device.startswith("cuda") else "CPU"
    print(f"space {space.name}, device {device} ({name}), {args.train} synthetic training "
          f"images, {args.points} points{' (tiny)' if args.tiny else ''}", flush=True)
    metrics = one_trial(args.space, args.overrides, device, args.train, args.points, True)
    rate = args.train / (metrics["time/craft_s"] + metrics["time/step_s"])
    print(f"one trial: training {rate:.1f} images/s (crafting {metrics['time/craft_s']:.2f}s, "
          f"step {metrics['time/step_s']:.2f}s), evaluation {metrics['time/eval_attacks_s']:.2f}s"
          f" + masking {metrics.get('time/masking_s', 0.0):.2f}s on {args.points} points, "
          f"final evaluation {metrics.get('time/final_s', 0.0):.2f}s", flush=True)
    for count in args.sharing:
        total, busy = sharing(args, device, count)
        print(f"{count} trial(s) at once: {total:.1f} training images/s in all, busy "
              f"{'n/a (no NVIDIA GPU)' if busy is None else format(busy, '.0%')}", flush=True)
    print(f"cost model ({device}; paper sizes from the space):")
    print("\n".join(cost_model(space, metrics, args.points)))
    if not device.startswith("cuda"):
        print("\n".join(WHAT_A_GPU_RUN_FILLS_IN))


# What this bench prints only on a GPU, and where the README puts it (say so when run without)
WHAT_A_GPU_RUN_FILLS_IN = (
    "not measured without a GPU (run `python bench/gpu.py` on one to fill in):",
    "  - training images/s and evaluation ms/point of a paper trial on the GPU (README: Speed, "
    "GPU);",
    "  - nvidia-smi's busy fraction with 1, 2 and 4 trials sharing the GPU, and the total "
    "images/s, i.e. which --gpus-per-trial keeps it >= 80% busy;",
    "  - GPU-hours per paper trial and per paper search (the cost model above, with GPU rates).",
)


if __name__ == "__main__":
    main()

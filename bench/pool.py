"""Does the small CNN's own 2x2 max-pool (trainables/defense/models.py, MaxPool2x2) pay?

    python bench/pool.py                       # mnist5k's small CNN, batch 64 and 256, 1 thread
    python bench/pool.py --dataset digits --batches 32 256

Times PyTorch's nn.MaxPool2d(2) against MaxPool2x2, alone on the first pooling's input and
inside the whole model (forward without a gradient, as inference and query attacks run it;
forward + backward w.r.t. the input, as gradient attacks and training run it), alternating
the two in every repeat so a noisy machine moves both alike; median of the repeats. The
whole-model rows are given twice: each pool before its ReLU (the shipped model) against the
model as a user writes it (ReLU, then nn.MaxPool2d), and against the shipped pool after its
ReLU (the order alone). It also checks that outputs and input gradients are bitwise equal
(the levers change no answer).
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from trainables.defense.models import (
    DefendedModel,
    MaxPool2x2,
    ModelParts,
    build_arch,
    with_torch_layers,
)
from trainables.setting.setup import DatasetInfo, dataset_info

Pass = Callable[[], torch.Tensor]


def passes(model: nn.Module, x: torch.Tensor, y: torch.Tensor) -> dict[str, Pass]:
    def forward() -> torch.Tensor:
        with torch.no_grad():
            return model(x)

    def backward() -> torch.Tensor:
        leaf = x.detach().requires_grad_(True)
        (grad,) = torch.autograd.grad(F.cross_entropy(model(leaf), y), leaf)
        return grad

    return {"forward (no grad)": forward, "forward + backward": backward}


def _pool_rows(first: torch.Tensor) -> dict[str, tuple[Pass, Pass]]:
    """The first pooling alone, on its real input (the first convolution's output)."""
    leaf = first.requires_grad_(True)
    grad = torch.randn_like(F.max_pool2d(first, 2))
    shape = tuple(first.shape)
    return {f"first pooling {shape}, forward": (
                lambda: F.max_pool2d(first.detach(), 2), lambda: MaxPool2x2()(first.detach())),
            f"first pooling {shape}, forward + backward": (
                lambda: torch.autograd.grad(F.max_pool2d(leaf, 2), leaf, grad)[0],
                lambda: torch.autograd.grad(MaxPool2x2()(leaf), leaf, grad)[0])}


def race(a: Callable[[], object], b: Callable[[], object], repeats: int
         ) -> tuple[float, float]:
    """Median seconds of `a` and of `b`, run alternately `repeats` times after a warm-up."""
    times: tuple[list[float], list[float]] = ([], [])
    a(), b()  # warm
    for _ in range(repeats):
        for run, found in ((a, times[0]), (b, times[1])):
            start = time.perf_counter()
            run()
            found.append(time.perf_counter() - start)
    return statistics.median(times[0]), statistics.median(times[1])


def layer_setup(description: str | None) -> tuple[argparse.Namespace, DatasetInfo, ModelParts]:
    """The layer benchmarks' arguments, and a fresh model of the data set's default
    architecture (seeded, on the asked threads)."""
    p = argparse.ArgumentParser(description=(description or "").split("\n\n")[0])
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 256])
    p.add_argument("--repeats", type=int, default=20)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    info = dataset_info(args.dataset)
    return args, info, build_arch(info.default_arch, info.image_shape, info.num_classes)


def main() -> None:
    args, info, parts = layer_setup(__doc__)
    ours = DefendedModel(parts.encoder, parts.head).eval()
    theirs = with_torch_layers(copy.deepcopy(ours), convolution=False)
    relu_first = with_torch_layers(copy.deepcopy(ours), pooling=False, convolution=False)
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {args.dataset} {info.default_arch}, "
          f"{args.threads} thread(s), median of {args.repeats}; ms, nn.MaxPool2d(2) vs "
          "MaxPool2x2")
    for batch in args.batches:
        x = torch.rand(batch, *info.image_shape)
        y = torch.randint(0, info.num_classes, (batch,))
        rows = _pool_rows(next(parts.encoder.children())(x).detach())
        mine, torch_pool = passes(ours, x, y), passes(theirs, x, y)
        order = passes(relu_first, x, y)
        rows.update({f"whole model, {name}": (torch_pool[name], mine[name]) for name in mine})
        rows.update({f"whole model, ReLU first -> pool first, {name}": (order[name], mine[name])
                     for name in mine})
        for label, (slow, fast) in rows.items():
            same = torch.equal(slow(), fast())
            before, after = race(slow, fast, args.repeats)
            print(f"  batch {batch:4d}  {label:<60} {before * 1e3:8.2f} -> {after * 1e3:8.2f}"
                  f"  ({before / after:.2f}x, bitwise equal: {'yes' if same else 'NO'})")


if __name__ == "__main__":
    main()

"""Does `torch.compile` (or channels_last) pay on this machine for a trial's passes?

    python bench/compile.py                    # mnist5k's small CNN, batch 64 and 320, 1 thread
    python bench/compile.py --dataset digits --batches 32 160

Times the forward + backward pass the pool's crafting and the training step repeat (a
small_cnn on the data set's image size, CE loss, gradient w.r.t. the input and the weights),
eager vs compiled (default mode; the compile time is printed apart, since every trial would
pay it once per shape) vs channels_last, with a median over repeats. A lever is switched on
in the code only where this measures it faster, compile time included over a trial's passes.
"""

from __future__ import annotations

import argparse
import statistics
import time
from collections.abc import Callable

import torch
import torch.nn.functional as F

from trainables.defense.models import DefendedModel, build_arch
from trainables.setting.setup import dataset_info

Step = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]


def _step(model: torch.nn.Module) -> Step:
    def run(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        x = x.requires_grad_(True)
        loss = F.cross_entropy(model(x), y)
        loss.backward()
        return x.grad  # type: ignore[return-value]
    return run


def _time(step: Step, x: torch.Tensor, y: torch.Tensor, repeats: int) -> float:
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        step(x.detach().clone(), y)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--dataset", default="mnist5k")
    p.add_argument("--batches", type=int, nargs="+", default=[64, 320])
    p.add_argument("--repeats", type=int, default=30)
    p.add_argument("--threads", type=int, default=1)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    info = dataset_info(args.dataset)
    parts = build_arch(info.default_arch, info.image_shape, info.num_classes)
    model = DefendedModel(parts.encoder, parts.head).eval()
    print(f"{time.strftime('%Y-%m-%d %H:%M')}, {args.dataset} {info.default_arch}, "
          f"{args.threads} thread(s), median of {args.repeats}; ms per forward + backward")
    for batch in args.batches:
        x = torch.rand(batch, *info.image_shape)
        y = torch.randint(0, info.num_classes, (batch,))
        eager = _time(_step(model), x, y, args.repeats)
        start = time.perf_counter()
        compiled = _step(torch.compile(model))
        compiled(x.clone(), y)  # the first call compiles
        compile_s = time.perf_counter() - start
        fast = _time(compiled, x, y, args.repeats)
        last = model.to(memory_format=torch.channels_last)
        channels = _time(_step(last), x.to(memory_format=torch.channels_last), y, args.repeats)
        model.to(memory_format=torch.contiguous_format)
        # A compiled pass no faster than eager never repays its compile time.
        repaid = (f"repaid after {compile_s / (eager - fast):.0f} passes" if fast < eager
                  else "never repaid")
        print(f"  batch {batch:4d}: eager {eager * 1e3:7.2f}  compiled {fast * 1e3:7.2f} "
              f"({eager / fast:.2f}x; compile {compile_s:.1f}s, {repaid})  "
              f"channels_last {channels * 1e3:7.2f} "
              f"({eager / channels:.2f}x)")


if __name__ == "__main__":
    main()

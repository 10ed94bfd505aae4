"""Calibration of the non-Lp families: accuracy per family and level, and a picture of each.

    python bench/calibrate_unforeseen.py                 # digits and mnist5k
    python bench/calibrate_unforeseen.py --datasets digits --points 128
    python bench/calibrate_unforeseen.py --families Whirlpool,Glitch,Prison

For each data set it trains (or loads from the cache) a standard model (the undefended target
every search prepares) and a PGD adversarially trained one, then prints, per family and level,
their accuracy under the family's gradient attack, the standard model's accuracy under the
gradient-free companion (random search, or Spatial's grid), and writes a PNG grid of clean vs
attacked examples per family and level (`--out`, default bench/results/).

The levels are those of the data set's default threat model (trainables/setup.py); pick them
so that at medium the standard model loses most of its accuracy while a person still reads
the digit, which the grid shows.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import torch

from trainables.attacks import build_attack
from trainables.attacks.threat import LEVELS
from trainables.config import TrialConfig
from trainables.defense.baselines import baseline_config
from trainables.setting.prepare import prepare_shared
from trainables.train import run_trial

OUT = Path(__file__).resolve().parent / "results"


def _accuracy(model: torch.nn.Module, x: torch.Tensor, y: torch.Tensor) -> float:
    with torch.no_grad():
        return float((model(x).argmax(1) == y).float().mean())


def calibrate(dataset: str, points: int, out: Path, only: list[str] | None = None) -> str:
    base = TrialConfig(dataset=dataset, epochs=12, eval_every=12, batch_size=32,
                       teacher_epochs=10, masking_samples=0, eval_samples=points,
                       heldout=("PGDL2",))
    shared = prepare_shared(base, log=print)
    standard = shared.target
    assert standard is not None
    start = time.perf_counter()
    robust = run_trial(baseline_config(base, "pgd-at"), shared=shared, log=lambda _: None).model
    print(f"{dataset}: PGD-AT trained in {time.perf_counter() - start:.0f}s", flush=True)
    standard.eval()
    robust.eval()
    threat = shared.setup.threat
    x, y = shared.split("val", samples=points, seed=0)
    models = {"standard": standard, "pgd-at": robust}
    lines = [f"### {dataset} ({len(y)} validation points; clean: standard "
             f"{_accuracy(standard, x, y):.2f}, PGD-AT {_accuracy(robust, x, y):.2f})", "",
             "| family | unit | " + " | ".join(
                 f"{level}: budget, standard, PGD-AT, standard (no gradient)"
                 for level in LEVELS) + " |",
             "|---|---|" + "---|" * len(LEVELS)]
    families = [name for name in sorted(threat.levels) if not only or name in only]
    examples = {}
    for family in families:
        cells = []
        for level in LEVELS:
            name = f"{family}@{level}"
            found = {}
            for label, model in models.items():
                attack = build_attack(name, model, threat, num_classes=10, seed=0)
                x_adv = attack(x, y)
                found[label] = _accuracy(model, x_adv, y)
                if label == "standard":
                    examples[(family, level)] = x_adv[:4]
            companion = "Spatial-Grid" if family == "Spatial" else f"{family}-RS"
            search = build_attack(f"{companion}@{level}", standard, threat, num_classes=10,
                                  seed=0)
            found["search"] = _accuracy(standard, search(x, y), y)
            cells.append(f"{threat.levels[family][level]:g}, {found['standard']:.2f}, "
                         f"{found['pgd-at']:.2f}, {found['search']:.2f}")
        unit = type(build_attack(f"{family}@medium", standard, threat, num_classes=10)
                    .corruption).doc.split(";")[-1].strip()  # type: ignore[attr-defined]
        lines.append(f"| {family} | {unit} | " + " | ".join(cells) + " |")
        print(lines[-1], flush=True)
    suffix = "".join(f"-{name.lower()}" for name in only or [])  # a part: its own picture
    _grid(x[:4], examples, families, out / f"unforeseen-{dataset}{suffix}.png")
    return "\n".join(lines)


def _grid(clean: torch.Tensor, examples: dict[tuple[str, str], torch.Tensor],
          families: list[str], path: Path) -> None:
    """Rows: families; columns: the clean image, then each level (4 digits per cell)."""
    columns = ["clean", *LEVELS]
    fig, axes = plt.subplots(len(families), len(columns),
                             figsize=(1.6 * len(columns) * 2, 1.6 * len(families)))
    for row, family in enumerate(families):
        for col, title in enumerate(columns):
            images = clean if title == "clean" else examples[(family, title)]
            strip = torch.cat(list(images[:, 0]), dim=1)  # 4 digits side by side
            ax = axes[row, col]
            ax.imshow(strip.numpy(), cmap="gray", vmin=0, vmax=1, interpolation="nearest")
            ax.set_xticks([])
            ax.set_yticks([])
            if row == 0:
                ax.set_title(title, fontsize=9)
            if col == 0:
                ax.set_ylabel(family, fontsize=9)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    print(f"grid written to {path}", flush=True)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--datasets", default="digits,mnist5k")
    p.add_argument("--points", type=int, default=256, help="validation points per data set")
    p.add_argument("--families", default="",
                   help="comma-separated families to calibrate (default: every one)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    only = [name for name in args.families.split(",") if name]
    tables = [calibrate(name, args.points, args.out, only) for name in args.datasets.split(",")]
    print("\n\n".join(tables))


if __name__ == "__main__":
    main()

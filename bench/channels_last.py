"""Would channels_last pay in a final evaluation on CPU? One trial of a kept search read back
from its last checkpoint, its final evaluation on the test split (no AutoAttack, no transfer
group) as shipped (NCHW, the small CNN's own MaxPool2x2) and with channels_last weights and
PyTorch's max-pool (fast in that layout), alternated, with each one's scores.

    python bench/channels_last.py RESULTS_FOLDER 1 --points 300 --repeats 2

RESULTS_FOLDER is a search's Ray results folder (`<keep>/ray_results/<name>`). One thread.
"""

from __future__ import annotations

import copy
import statistics

import torch
from attack_convergence import (
    kept_trial_on_test_points,
    timed_final_evaluation,
    timed_final_header,
)

from trainables.defense.models import with_torch_layers

SCORES = ("heldout/family_mean_acc", "heldout/union_acc", "sealed/family_mean_acc",
          "sealed/union_acc")


def main() -> None:
    args, model, config, shared = kept_trial_on_test_points(__doc__.split("\n\n")[0])
    # a 1-channel input is the same tensor in either layout: the weights decide the layout
    models = {"NCHW (shipped)": model,
              "channels_last": with_torch_layers(copy.deepcopy(model), convolution=False).to(
                  memory_format=torch.channels_last)}
    seconds: dict[str, list[float]] = {label: [] for label in models}
    scores: dict[str, dict[str, float]] = {}
    for _ in range(args.repeats):
        for label, defended in models.items():
            took, metrics = timed_final_evaluation(defended, shared, config)
            seconds[label].append(took)
            scores[label] = {k: metrics[f"test/{k}"] for k in SCORES}
    base = statistics.median(seconds["NCHW (shipped)"])
    print(timed_final_header(args))
    for label, values in seconds.items():
        print(f"  {label:<15} {' '.join(f'{v:6.1f}' for v in values)} s, median "
              f"{statistics.median(values):6.1f} s ({statistics.median(values) / base:.2f}x)  "
              + "  ".join(f"{k} {v:.4f}" for k, v in scores[label].items()))


if __name__ == "__main__":
    main()

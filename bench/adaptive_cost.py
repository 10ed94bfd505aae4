"""What the adaptive query attacks cost on a model they cannot change (PGD-AT: the same answer
on every pass and alone as in its batch), with the check that skips them and without it.

    python bench/adaptive_cost.py --points 20

Times mid-query's held-out query attacks asked plainly, then `adaptive_query_masks` as the
final comparison runs it (the check finds nothing to adapt to) and forced to ask adaptively.
"""

from __future__ import annotations

import argparse
import time

import torch

import spaces
import trainables.scoring.served as served
from trainables.attacks import build_attack
from trainables.defense.baselines import baseline_config
from trainables.scoring.evaluate import clean_correct, robust_mask
from trainables.setting.prepare import prepare_shared
from trainables.train import run_trial
from trainables.vocab import Split


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n\n")[0])
    p.add_argument("--points", type=int, default=20)
    p.add_argument("--threads", type=int, default=2)
    args = p.parse_args()
    torch.set_num_threads(args.threads)
    space = spaces.load("mid-query")
    base = space.trial_config(threads=args.threads, masking_samples=0)
    shared = prepare_shared(base, log=lambda _: None)
    model = run_trial(baseline_config(base, "pgd-at"), shared=shared, log=lambda _: None,
                      validation=False).model.eval()
    x, y = shared.split(Split.TEST)
    x, y, threat = x[:args.points], y[:args.points], shared.setup.threat
    started, plain = time.perf_counter(), {}
    for name in base.heldout:
        attack = build_attack(name, model, threat, num_classes=10)
        plain[name] = robust_mask(model, attack, x, y, clean_correct(model, x, y, 256),
                                  batch_size=256)
    seconds = {"plain": time.perf_counter() - started}
    for label, adapts in (("adaptive, checked", None), ("adaptive, forced", True)):
        if adapts:
            served.answers_depend_on_asking = lambda model, x: True  # type: ignore[assignment]
        started = time.perf_counter()
        served.adaptive_query_masks(model, x, y, plain, threat, num_classes=10, batch_size=256,
                                    seed=0)
        seconds[label] = time.perf_counter() - started
    print(f"{args.points} points, PGD-AT, {', '.join(base.heldout)}: " + ", ".join(
        f"{k} {v:.2f}s ({v / seconds['plain']:.2f}x plain)" for k, v in seconds.items()))


if __name__ == "__main__":
    main()

"""The Pareto plot's labels never print over one another, also where dots coincide."""

from __future__ import annotations

import itertools

import matplotlib.pyplot as plt
import pytest

from search.leaderboard import Entry
from search.report import pareto_figure
from search.vocab import TAG, TrialStatus
from trainables.vocab import CLEAN_ACC, HELDOUT_MEAN


def _entry(name: str, clean: float, heldout: float, *, baseline: str | None = None,
           flags: str = "none") -> Entry:
    tags = {TAG.MASKING_FLAGS: flags, **({TAG.BASELINE: baseline} if baseline else {})}
    return Entry(f"run-{name}", name, f"{name} lr=0.1", TrialStatus.COMPLETED, 4,
                 {CLEAN_ACC: clean, HELDOUT_MEAN: heldout}, {}, tags)


CROWDS = {
    # pgd-at and trades 0.001 apart, across a rounding boundary (0.8745 -> 0.87, 0.8755 ->
    # 0.88): a stack keyed by rounded position puts both on the same row
    "nearly coincident baselines": [
        _entry("pgd-at", 0.8745, 0.3125, baseline="pgd-at"),
        _entry("trades", 0.8755, 0.3125, baseline="trades"),
        _entry("t03", 0.90, 0.20)],
    # five labels on one dot, and a front trial beside it
    "coincident": [
        _entry("pgd-at", 0.5, 0.5, baseline="pgd-at"),
        _entry("trades", 0.5, 0.5, baseline="trades"),
        _entry("mart", 0.5, 0.5, baseline="mart"),
        _entry("standard", 0.5, 0.5, baseline="standard"),
        _entry("t01", 0.5, 0.5), _entry("t02", 0.5005, 0.4995)],
    # a whole front within a few hundredths, as a short validation split gives
    "dense front": [_entry(f"t{i:02d}", 0.80 + 0.004 * i, 0.40 - 0.004 * i)
                    for i in range(12)],
}


@pytest.mark.parametrize("crowd", CROWDS)
def test_no_label_overlaps_another(crowd: str) -> None:
    fig = pareto_figure(CROWDS[crowd])
    try:
        fig.canvas.draw()
        renderer = fig.canvas.get_renderer()
        texts = fig.axes[0].texts
        boxes = {t.get_text(): t.get_window_extent(renderer) for t in texts}
        assert len(boxes) == len(texts), "a label is drawn twice"
        for (a, box_a), (b, box_b) in itertools.combinations(boxes.items(), 2):
            assert not box_a.overlaps(box_b), f"{a!r} prints over {b!r}: {box_a} {box_b}"
    finally:
        plt.close(fig)
    expected = {"pgd-at", "trades", "mart", "standard"} & {e.name.split()[0]
                                                           for e in CROWDS[crowd]}
    assert expected <= set(boxes), "every baseline is labelled"

"""The search's progress lines: what a finished trial's line says about its objective."""

from __future__ import annotations

from types import SimpleNamespace

import pytest

import spaces
from search.progress import ProgressPrinter
from spaces import RECORD_KEY
from trainables.vocab import MASKING_ANY, THREAT_PGD10


def _trial(result: dict[str, float]) -> SimpleNamespace:
    space = spaces.load("smoke")
    record = space.record(space.default_values())
    return SimpleNamespace(config={RECORD_KEY: record}, experiment_tag="3_x", trial_id="abc",
                           status="TERMINATED", last_result=result)


@pytest.mark.parametrize(("iterations", "said"), [
    (3, "(PGD-10 0.336 below the robust floor 0.5: objective lowered)"),
    (1, None),  # an early rung pays nothing, and its line says nothing of the floor
])
def test_a_line_says_when_the_robust_floor_lowered_the_objective(
        capsys: pytest.CaptureFixture[str], iterations: int, said: str | None) -> None:
    printer = ProgressPrinter(num_samples=4, max_t=3, objective="val/objective", epochs=6,
                              robust_floor=0.5)
    trial = _trial({"training_iteration": iterations, "val/objective": 0.507,
                    THREAT_PGD10: 0.336, MASKING_ANY: 0.0})
    printer.on_trial_complete(0, [trial], trial)
    line = capsys.readouterr().out
    assert line.count("\n") == 1 and "t03 " in line
    assert (said in line) if said else "floor" not in line
    # without a floor, or above it, nothing is said
    for printer, pgd10 in ((ProgressPrinter(num_samples=4, max_t=3, objective="val/objective",
                                            epochs=6), 0.336),
                           (ProgressPrinter(num_samples=4, max_t=3, objective="val/objective",
                                            epochs=6, robust_floor=0.5), 0.6)):
        trial = _trial({"training_iteration": iterations, "val/objective": 0.6,
                        THREAT_PGD10: pgd10, MASKING_ANY: 0.0})
        printer.on_trial_complete(0, [trial], trial)
        assert "floor" not in capsys.readouterr().out

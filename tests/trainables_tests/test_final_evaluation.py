"""The final evaluation's AutoAttack is the official code (pyautoattack), run as such."""

from __future__ import annotations

import pyautoattack
import torch

from trainables.defense.models import DefendedModel
from trainables.defense.unig import UniG
from trainables.scoring.final import autoattack_robust
from trainables.setting.prepare import Shared


def test_autoattack_is_the_official_code_and_its_dynamic_check_starts_clean(
        digits_model: DefendedModel, smoke_shared: Shared) -> None:
    x, y = digits_model.val_x[:8], digits_model.val_y[:8]  # type: ignore[index]
    unig = DefendedModel(digits_model.encoder, digits_model.head, UniG("per_sample"))
    # pyautoattack's own check, once on a model with a test-time optimisation, leaves its
    # module-level call counter raised: every later model would be "dynamic" without a reset
    pyautoattack.checks.check_dynamic(unig, x)
    assert any(c > 0 for c in pyautoattack.checks.funcs.values())
    found = autoattack_robust(digits_model, x, y, smoke_shared.setup.threat, num_classes=10,
                              seed=0, batch_size=8)
    assert found is not None
    robust, notes, version = found
    assert version == "standard" and robust.dtype == torch.bool and len(robust) == 8
    assert not any("dynamic" in note for note in notes), notes
    assert pyautoattack.AutoAttack.__module__ == "pyautoattack.autoattack"

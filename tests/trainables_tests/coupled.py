"""A model declared to couple its batch, for the attacks' early-exit tests."""

from __future__ import annotations

import torch


class Coupled(torch.nn.Module):
    """The same model, declared to couple its batch (as UniG does): attacks judge it whole at
    every step."""

    couples_batch = True

    def __init__(self, model: torch.nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)

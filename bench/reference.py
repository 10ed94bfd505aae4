"""The reference every speed figure is a ratio to: the PGD-AT loop a user writes instead of
using this project (plain PyTorch + torchattacks, the same model, data, epochs, batch, steps,
step size and optimiser as the project's `pgd-at` recipe), timed in the same run, so that a
figure survives a slow day on a shared machine."""

from __future__ import annotations

import time

import torch
import torch.nn.functional as F

from trainables.attacks.specs import attack_budget
from trainables.config import TrialConfig
from trainables.defense.models import build_arch, with_torch_layers
from trainables.setting.prepare import Shared

__all__ = ["plain_pgd_at"]


def plain_pgd_at(config: TrialConfig, shared: Shared) -> float:
    """Seconds of the plain loop: torchattacks PGD on each batch, CE on it, Adam."""
    import torchattacks

    torch.manual_seed(config.seed)
    setup = shared.setup
    parts = build_arch(setup.arch, setup.info.image_shape, setup.info.num_classes)
    # PyTorch's own layers (nn.MaxPool2d, not the project's faster MaxPool2x2): what a user
    # writes, so a lever of the project's model shows in the ratio
    model = with_torch_layers(torch.nn.Sequential(parts.encoder, parts.head))
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    eps = attack_budget("PGD", setup.threat)
    steps = config.train_attack_steps
    attack = torchattacks.PGD(model, eps=eps, alpha=2.5 * eps / steps, steps=steps,
                              random_start=True)
    x_all, y_all = shared.data.train_x, shared.data.train_y
    start = time.perf_counter()
    for epoch in range(config.epochs):
        order = torch.randperm(len(y_all), generator=torch.Generator().manual_seed(epoch))
        for index in order.split(config.batch_size):
            x, y = x_all[index], y_all[index]
            model.eval()
            adversarial = attack(x, y)
            model.train()
            loss = F.cross_entropy(model(adversarial), y)
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    return time.perf_counter() - start

"""Non-Lp attack families: differentiable corruptions whose parameters an attack optimises.

Each family has the shape of the ImageNet-UA attacks (Kaufmann et al. 2023): latent parameters
(a flow field, DCT-coefficient noise, snowflake intensities...) turned into a corrupted image
by a differentiable transformation built on kornia; the budget bounds the latents, which live
in a box, so an attack is projected signed-gradient ascent on the cross-entropy, from a random
start inside the box. Every family also has a gradient-free companion with the same number of
model evaluations: random search over the same box, or, for Spatial, Engstrom et al.'s
worst-of-k grid. A gradient attack that does worse than its companion is a masking sign.

Budgets (one number per level, its unit per family) are in the threat model's `levels` table;
`docs` below say what each family's number means.
"""

from __future__ import annotations

import copy
import math
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial

import kornia.enhance as KE
import kornia.enhance.jpeg as kjpeg
import kornia.filters as KF
import kornia.geometry.transform as KT
import torch
import torch.nn.functional as F
from kornia.geometry import create_meshgrid
from torch import nn

from trainables.attacks.base import SeededAttack, couples_batch, margin_loss
from trainables.attacks.linear_maps import gaussian_blur, plasma, plasma_draw_shapes
from trainables.attacks.precision import verdict
from trainables.attacks.specs import CORRUPTIONS, AttackSpec
from trainables.errors import ConfigError

__all__ = ["FAMILIES", "Box", "Family", "TransformAttack", "family"]

Latents = list[torch.Tensor]
BOUND_TOLERANCE = 1e-5  # latents may exceed their box by float round-off only


@dataclass(frozen=True)
class Box:
    """Per-coordinate bounds of one latent tensor: [low, high]."""

    low: float
    high: float

    @property
    def half_width(self) -> float:
        return (self.high - self.low) / 2


class Family(ABC):
    """A family's corruption at one budget; `prepare` fits it to a batch of images."""

    doc = ""

    def __init__(self, budget: float) -> None:
        self.budget = budget
        self.channels = self.height = self.width = 0

    @abstractmethod
    def boxes(self) -> list[Box]:
        """One box per latent tensor."""

    @abstractmethod
    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        """One shape per latent tensor."""

    @abstractmethod
    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        """The corrupted images (not yet clamped to [0, 1])."""

    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> None:
        """Fits the corruption to the images' shape, and draws what is not optimised (masks,
        orientations) for this batch."""
        self.channels, self.height, self.width = x.shape[1:]

    def rows(self, index: torch.Tensor) -> Family:
        """The corruption of the prepared batch's samples `index` only (what `prepare` drew
        for them, in that order); families that draw nothing per sample are their own."""
        return self

    def sample(self, batch: int, device: torch.device, generator: torch.Generator) -> Latents:
        """Latents drawn uniformly inside their boxes."""
        return [box.low + (box.high - box.low) * torch.rand(shape, generator=generator,
                                                               device=device)
                for box, shape in zip(self.boxes(), self.shapes(batch), strict=True)]

    def project(self, latents: Latents) -> Latents:
        return [latent.clamp(box.low, box.high)
                for latent, box in zip(latents, self.boxes(), strict=True)]

    def inside(self, latents: Latents) -> torch.Tensor:
        """Per sample: every latent coordinate inside its box (up to round-off)."""
        ok = torch.ones(len(latents[0]), dtype=torch.bool, device=latents[0].device)
        for latent, box in zip(latents, self.boxes(), strict=True):
            slack = BOUND_TOLERANCE * max(1.0, abs(box.low), abs(box.high))
            flat = latent.reshape(len(latent), -1)
            ok &= (flat >= box.low - slack).all(1) & (flat <= box.high + slack).all(1)
        return ok


# ---------------------------------------------------------------- geometric families


class Spatial(Family):
    doc = ("rotation + translation + scale (Engstrom et al. 2019); budget: the largest "
           "rotation in degrees; translation up to budget/300 of the side and scale "
           "1 +- budget/300 go with it (30 degrees: +-10%)")

    def shift_max(self) -> float:
        return self.budget / 300 * self.width

    def boxes(self) -> list[Box]:
        return [Box(-self.budget, self.budget), Box(-self.shift_max(), self.shift_max()),
                Box(-self.budget / 300, self.budget / 300)]

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch,), (batch, 2), (batch,)]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        return warp(x, *latents)


def warp(x: torch.Tensor, angle: torch.Tensor, shift: torch.Tensor,
         log_scale: torch.Tensor | None = None) -> torch.Tensor:
    """Rotates (degrees) and scales about the image centre, then translates (pixels):
    bilinear, zeros outside, as foolbox's spatial attack does."""
    batch, _, height, width = x.shape
    centre = x.new_tensor([(width - 1) / 2, (height - 1) / 2]).expand(batch, 2)
    scale = (log_scale.exp() if log_scale is not None else x.new_ones(batch))
    matrix = KT.get_affine_matrix2d(shift, centre, scale[:, None].expand(batch, 2), angle)
    return KT.warp_affine(x, matrix[:, :2], (height, width), mode="bilinear",
                          padding_mode="zeros", align_corners=True)


class Flow(Family):
    doc = "a per-pixel flow field (StAdv, Xiao et al. 2018); budget: its Linf size in pixels"

    def boxes(self) -> list[Box]:
        return [Box(-self.budget, self.budget)]

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, 2, self.height, self.width)]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        (flow,) = latents
        grid = create_meshgrid(self.height, self.width, normalized_coordinates=False,
                               device=x.device, dtype=x.dtype)
        return KT.remap(x, grid[..., 0] + flow[:, 0], grid[..., 1] + flow[:, 1],
                        mode="bilinear", padding_mode="border", align_corners=True)


class Elastic(Family):
    doc = ("a smooth displacement field (Gaussian-smoothed noise, kornia's elastic "
           "transform); budget: the noise's Linf size in half-image units")

    def boxes(self) -> list[Box]:
        return [Box(-self.budget, self.budget)]

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, 2, self.height, self.width)]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        """kornia's `elastic_transform2d(x, noise, (size, size), (sigma, sigma), alpha=1,
        align_corners=True, padding_mode="border")`, its blur by matrices (linear_maps)."""
        (noise,) = latents
        size, sigma = smoothing(self.width)
        shift = gaussian_blur(noise, size, sigma, "constant").permute(0, 2, 3, 1)
        identity = torch.eye(2, 3, dtype=x.dtype, device=x.device)[None]
        grid = F.affine_grid(identity, [1, 1, self.height, self.width], align_corners=True)
        return F.grid_sample(x, grid + shift, mode="bilinear", padding_mode="border",
                             align_corners=True)


# ---------------------------------------------------------------- filters and codecs


class Blur(Family):
    doc = ("a spatially varying Gaussian blur: per pixel, x + m (blur(x) - x) with a smooth "
           "map m; budget: the largest m (at most 1)")

    def boxes(self) -> list[Box]:
        return [Box(0.0, self.budget)]

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, 1, self.height, self.width)]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        (amount,) = latents
        size, sigma = smoothing(self.width)
        mix = gaussian_blur(amount, size, sigma, "replicate")
        blurred = gaussian_blur(x, size, sigma, "replicate")
        return x + mix * (blurred - x)


class JPEG(Family):
    doc = ("noise on the 8x8 DCT coefficients of each channel, in units of JPEG's luma "
           "quantisation step (so, like JPEG artefacts, larger at high frequencies); budget: "
           "its Linf size in steps")

    def boxes(self) -> list[Box]:
        return [Box(-self.budget, self.budget)]

    def _padded(self) -> tuple[int, int]:
        return math.ceil(self.height / 8) * 8, math.ceil(self.width / 8) * 8

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        height, width = self._padded()
        return [(batch, self.channels, height * width // 64, 8, 8)]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        (noise,) = latents
        height, width = self._padded()
        padded = F.pad(x, (0, width - self.width, 0, height - self.height), mode="replicate")
        planes = padded.flatten(0, 1) * 255  # (B*C, H, W) in JPEG's [0, 255]
        table = kjpeg._get_default_qt_y(x.device, x.dtype)
        coefficients = kjpeg._dct_8x8(kjpeg._patchify_8x8(planes)) + noise.flatten(0, 1) * table
        image = kjpeg._unpatchify_8x8(kjpeg._idct_8x8(coefficients), height, width) / 255
        return image.view(padded.shape)[..., :self.height, :self.width]


# ---------------------------------------------------------------- photometric families


class Contrast(Family):
    doc = ("contrast (about the image mean), brightness and gamma per image; budget b: "
           "contrast and gamma factors in [e^-b, e^b], brightness in [-b/2, b/2]")

    def boxes(self) -> list[Box]:
        b = self.budget
        return [Box(-b, b), Box(-b / 2, b / 2), Box(-b, b)]

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch,), (batch,), (batch,)]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        log_contrast, brightness, log_gamma = latents
        out = KE.adjust_contrast_with_mean_subtraction(x, log_contrast.exp())
        out = out + brightness.view(-1, 1, 1, 1)
        # gamma on [eps, 1]: the power of 0 has no gradient
        return KE.adjust_gamma(out.clamp(1e-4, 1), log_gamma.exp())


# ---------------------------------------------------------------- weather and textures


class Fog(Family):
    doc = ("a fractal fog map (kornia's diamond-square plasma, its random draws optimised) "
           "blended in: (x + k fog) / (1 + k); budget: the largest k")

    def boxes(self) -> list[Box]:
        return [Box(0.0, self.budget)] + [Box(0.0, 1.0)] * len(self.shapes(1)[1:])

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch,), *plasma_draw_shapes(self.height, self.width, batch)]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        strength, *draws = latents
        fog = plasma(draws, self.height, self.width, roughness=0.6)
        k = strength.view(-1, 1, 1, 1)
        return (x + k * fog) / (1 + k)


class Snow(Family):
    doc = ("bright streaks (snowflakes on a sparse grid, smeared by a motion-blur line) added "
           "to the image; budget: the largest flake brightness")

    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> None:
        super().prepare(x, generator)
        batch, device = len(x), x.device
        spacing = max(2, self.width // 7)
        self.mask = (torch.rand(batch, 1, self.height, self.width, generator=generator,
                                device=device) < 1 / spacing**2).to(x.dtype)
        angles = torch.rand(batch, generator=generator, device=device) * 360
        size = _odd(max(3, self.width // 5))
        kernel = KF.get_motion_kernel2d(size, angles, direction=torch.zeros_like(angles),
                                        mode="bilinear")
        self.kernel = kernel / kernel.flatten(1).amax(1).view(-1, 1, 1)  # a flake keeps its peak

    def rows(self, index: torch.Tensor) -> Family:
        part = copy.copy(self)
        part.mask, part.kernel = self.mask[index], self.kernel[index]
        return part

    def boxes(self) -> list[Box]:
        return [Box(0.0, self.budget)]

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, 1, self.height, self.width)]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        (intensity,) = latents
        snow = KF.filter2d(intensity * self.mask, self.kernel, border_type="constant")
        return x + snow


class Gabor(Family):
    doc = ("Gabor noise: noise convolved with an oriented Gabor kernel (a band-pass texture), "
           "scaled so its largest pixel change is the budget")

    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> None:
        super().prepare(x, generator)
        theta = torch.rand(len(x), generator=generator, device=x.device) * math.pi
        self.kernel = gabor_kernels(theta, size=_odd(max(3, self.width // 3)))

    def rows(self, index: torch.Tensor) -> Family:
        part = copy.copy(self)
        part.kernel = self.kernel[index]
        return part

    def boxes(self) -> list[Box]:
        return [Box(-1.0, 1.0)]

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, self.channels, self.height, self.width)]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        (sparse,) = latents  # dense: a sparse map left too few pixels to attack 28x28 digits
        noise = KF.filter2d(sparse, self.kernel, border_type="constant")
        peak = noise.flatten(1).abs().amax(1).clamp_min(1e-12).view(-1, 1, 1, 1)
        return x + self.budget * noise / peak


class Whirlpool(Family):
    doc = ("swirls (ImageNet-UA's Whirlpool): three vortices at random centres, each turning "
           "the image about its centre by s exp(-r^2 / rho^2); budget: the largest turn s at a "
           "centre, in radians, either way")

    VORTICES = 3

    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> None:
        super().prepare(x, generator)
        shape = (len(x), self.VORTICES)
        size = x.new_tensor([self.width - 1, self.height - 1])
        self.centres = torch.rand(*shape, 2, generator=generator, device=x.device,
                                  dtype=x.dtype) * size
        self.radii = (0.2 + 0.2 * torch.rand(shape, generator=generator, device=x.device,
                                             dtype=x.dtype)) * self.width

    def rows(self, index: torch.Tensor) -> Family:
        part = copy.copy(self)
        part.centres, part.radii = self.centres[index], self.radii[index]
        return part

    def boxes(self) -> list[Box]:
        return [Box(-self.budget, self.budget)]

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, self.VORTICES)]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        (strength,) = latents
        grid = create_meshgrid(self.height, self.width, normalized_coordinates=False,
                               device=x.device, dtype=x.dtype).expand(len(x), -1, -1, -1)
        for k in range(self.VORTICES):  # each vortex turns the coordinates the last one left
            centre = self.centres[:, k].view(-1, 1, 1, 2)
            d = grid - centre
            radius = self.radii[:, k].view(-1, 1, 1)
            angle = strength[:, k].view(-1, 1, 1) * torch.exp(-(d**2).sum(-1) / radius**2)
            cos, sin = angle.cos(), angle.sin()
            grid = centre + torch.stack((cos * d[..., 0] - sin * d[..., 1],
                                         sin * d[..., 0] + cos * d[..., 1]), dim=-1)
        return KT.remap(x, grid[..., 0], grid[..., 1], mode="bilinear",
                        padding_mode="border", align_corners=True)


class Glitch(Family):
    doc = ("a torn image (a digital glitch): bands of rows, each shifted sideways on its own; "
           "budget: the largest shift in pixels")

    def _bands(self) -> int:
        return max(2, self.height // 4)

    def boxes(self) -> list[Box]:
        return [Box(-self.budget, self.budget)]

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, self._bands())]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        (shift,) = latents
        band = torch.arange(self.height, device=x.device) * self._bands() // self.height
        grid = create_meshgrid(self.height, self.width, normalized_coordinates=False,
                               device=x.device, dtype=x.dtype)
        columns = grid[..., 0] + shift[:, band].unsqueeze(-1)  # (B, H, W): a row's own shift
        return KT.remap(x, columns, grid[..., 1].expand_as(columns), mode="bilinear",
                        padding_mode="zeros", align_corners=True)


class Prison(Family):
    doc = ("prison bars (ImageNet-UA's Prison): vertical bars a fourteenth of the width "
           "wide, one every quarter of it, at a random phase, whose pixels the attack changes "
           "freely; budget: the largest change of a bar pixel")

    def prepare(self, x: torch.Tensor, generator: torch.Generator) -> None:
        super().prepare(x, generator)
        spacing = max(3, self.width // 4)
        phase = torch.randint(spacing, (len(x), 1), generator=generator, device=x.device)
        column = torch.arange(self.width, device=x.device)
        bars = (column - phase) % spacing < max(1, self.width // 14)
        self.mask = bars.to(x.dtype).view(len(x), 1, 1, self.width)

    def rows(self, index: torch.Tensor) -> Family:
        part = copy.copy(self)
        part.mask = self.mask[index]
        return part

    def boxes(self) -> list[Box]:
        return [Box(-self.budget, self.budget)]

    def shapes(self, batch: int) -> list[tuple[int, ...]]:
        return [(batch, self.channels, self.height, self.width)]

    def apply(self, x: torch.Tensor, latents: Latents) -> torch.Tensor:
        (change,) = latents
        return x + self.mask * change


def gabor_kernels(theta: torch.Tensor, *, size: int) -> torch.Tensor:
    """One Gabor kernel per orientation (B, size, size), L1-normalised (kornia has none)."""
    r = torch.arange(size, dtype=theta.dtype, device=theta.device) - (size - 1) / 2
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    cos, sin = theta.cos().view(-1, 1, 1), theta.sin().view(-1, 1, 1)
    along, across = xx * cos + yy * sin, -xx * sin + yy * cos
    sigma, wavelength = size / 4, size / 2
    kernel = torch.exp(-(along**2 + across**2) / (2 * sigma**2)) * torch.cos(
        2 * math.pi * along / wavelength)
    return kernel / kernel.flatten(1).abs().sum(1).view(-1, 1, 1)


def smoothing(width: int) -> tuple[int, float]:
    """Elastic's and Blur's Gaussian (one definition, so the benchmark's kornia versions use
    the same): a kernel half the image wide, sigma an eighth of it."""
    return _odd(width // 2), max(1.0, width / 8)


def _odd(n: int) -> int:
    return max(3, n | 1)


# every Family subclass above, by name; the table of attacks (specs.CORRUPTIONS, torch-free)
# names the same families, and a family missing from either is an error here, at import
FAMILIES: dict[str, type[Family]] = {cls.__name__: cls for cls in Family.__subclasses__()}
if set(FAMILIES) != set(CORRUPTIONS):
    raise ImportError(f"corruption families {sorted(FAMILIES)} and the attack table's "
                      f"{sorted(CORRUPTIONS)} differ: add the missing one to both")


def family(name: str, budget: float) -> Family:
    return FAMILIES[name](budget)


# ---------------------------------------------------------------- the attacks


class TransformAttack(SeededAttack):
    """Optimises a family's latents against a model: `search` is "gradient" (projected
    signed-gradient ascent on the loss), "random" (random search), "grid" (Spatial's
    worst-of-k grid) or "draw" (one random corruption, no optimisation: augmentation). Each
    sample keeps the first latents that fool the model, else those of the highest loss
    seen. `loss` is "ce" or "margin" (the best other logit minus the true one, Carlini and
    Wagner's: it does not saturate where CE does, which is what a stronger evaluation of a
    model with large logits needs)."""

    def __init__(self, spec: AttackSpec, model: nn.Module, corruption: Family, *, steps: int = 0,
                 search: str = "gradient", step_factor: float = 2.5, loss: str = "ce",
                 seed: int = 0, name: str | None = None) -> None:
        super().__init__(spec, model, corruption.budget, seed=seed, name=name)
        if loss not in LOSSES:
            raise ConfigError(f"{name or spec.name}: loss {loss!r} is not one of "
                              f"{sorted(LOSSES)}")
        self.corruption, self.steps, self.search = corruption, steps, search
        self.step_factor, self.loss = step_factor, LOSSES[loss]
        self.last_latents: Latents | None = None

    def within_budget(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """The latents the last call kept are inside their boxes, and re-applying them gives
        exactly the returned images (so the budget check is on what was returned)."""
        if self.last_latents is None or len(self.last_latents[0]) != len(x):
            return torch.zeros(len(x), dtype=torch.bool, device=x.device)
        with torch.no_grad():
            again = self.corruption.apply(x, self.last_latents).clamp(0, 1)
        same = (again - x_adv).flatten(1).abs().amax(1) <= 1e-4
        return self.corruption.inside(self.last_latents) & same

    def craft(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self(x, y)  # always inside the budget, never the clean input

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        generator = self.generator(x.device)
        corruption = self.corruption
        corruption.prepare(x, generator)
        best = _Best(self.model, corruption, x, y, self.loss)
        if self.search == "draw":  # one random corruption: the model is never asked
            self.last_latents = corruption.sample(len(x), x.device, generator)
            with torch.no_grad():
                return corruption.apply(x, self.last_latents)
        if self.search == "grid":
            for latents in self._grid(len(x), x.device):
                best.judge(latents)
        elif self.search == "random":
            for _ in range(self.steps):  # drawn for every sample: the same stream either way
                best.judge(corruption.sample(len(x), x.device, generator))
        else:
            latents = corruption.sample(len(x), x.device, generator)
            sizes = [self.step_factor * box.half_width / self.steps
                     for box in corruption.boxes()]
            for _ in range(self.steps):
                if best.done():
                    break
                latents = [lat.detach().requires_grad_(True) for lat in latents]
                loss = best.judge(latents)  # one forward pass judges and steps
                grads = torch.autograd.grad(loss.sum(), latents)
                # a fooled sample's gradient is 0 (it is no longer judged): its latents stay
                latents = corruption.project([lat.detach() + size * grad.sign() for lat, size,
                                              grad in zip(latents, sizes, grads, strict=True)])
            best.judge(latents)
        self.last_latents = best.latents
        with torch.no_grad():
            return corruption.apply(x, best.latents)

    def _grid(self, batch: int, device: torch.device) -> list[Latents]:
        """Spatial's worst-of-k grid: 5 rotations x 3 x 3 translations, scale 1."""
        assert isinstance(self.corruption, Spatial)
        angle, shift = self.corruption.budget, self.corruption.shift_max()
        return [[torch.full((batch,), a, device=device),
                 torch.tensor([dx, dy], device=device).expand(batch, 2),
                 torch.zeros(batch, device=device)]
                for a in torch.linspace(-angle, angle, 5).tolist()
                for dx in torch.linspace(-shift, shift, 3).tolist()
                for dy in torch.linspace(-shift, shift, 3).tolist()]


class _Best:
    """Per sample, the first latents that fool the model, else those of the highest loss.

    A sample that was fooled keeps its latents whatever comes next, so the model is only
    asked about the others (early exit), unless its outputs couple the batch's samples (UniG
    optimises one multiplier over the batch): then every sample is judged at every step, as
    a served model would see them."""

    def __init__(self, model: nn.Module, corruption: Family, x: torch.Tensor,
                 y: torch.Tensor, loss: Loss) -> None:
        self.model, self.corruption, self.x, self.y, self.loss_of = model, corruption, x, y, loss
        self.latents: Latents = []
        self.loss = torch.full((len(x),), -math.inf, device=x.device)
        self.fooled = torch.zeros(len(x), dtype=torch.bool, device=x.device)
        self.early_exit = not couples_batch(model)

    def done(self) -> bool:
        return self.early_exit and bool(self.fooled.all())

    def judge(self, latents: Latents) -> torch.Tensor:
        """Scores `latents` (one per sample of the batch), keeps them where they are the best
        so far; returns the loss of the samples judged (with its graph, when the latents
        require gradients)."""
        detached = [lat.detach() for lat in latents]
        if not self.latents:
            self.latents = detached
        index = (~self.fooled).nonzero().flatten() if self.early_exit else None
        if index is not None and len(index) == 0:
            return self.loss[:0]
        if index is None or len(index) == len(self.x):
            x, y, corruption, part = self.x, self.y, self.corruption, latents
        else:
            x, y, corruption = self.x[index], self.y[index], self.corruption.rows(index)
            part = [lat[index] for lat in latents]
        with torch.set_grad_enabled(latents[0].requires_grad):
            images = corruption.apply(x, part).clamp(0, 1)
            logits = self.model(images)
            loss = self.loss_of(logits, y)
        wrong = verdict(self.model, images, y, logits)
        seen = loss.detach()
        if len(x) != len(self.x):  # back to the whole batch; the others are fooled already
            assert index is not None
            wrong = torch.zeros_like(self.fooled).index_fill_(0, index[wrong], True)
            seen = self.loss.index_put((index,), seen.to(self.loss.dtype))
        take = ~self.fooled & (wrong | (seen > self.loss))
        self.latents = [torch.where(_rows(take, kept), new, kept)
                        for kept, new in zip(self.latents, detached, strict=True)]
        self.loss = torch.where(take, seen, self.loss)
        self.fooled |= wrong
        return loss


Loss = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
LOSSES: dict[str, Loss] = {"ce": partial(F.cross_entropy, reduction="none"),
                           "margin": margin_loss}


def _rows(mask: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """A per-sample mask shaped to broadcast over a latent tensor."""
    return mask.view(-1, *([1] * (like.dim() - 1)))

"""Batched, seeded data augmentation for 2D medical images (CPU or GPU).

Every transform acts on a whole batch at once, so it can run on the accelerator after the
data loader has collated the batch. Each sample of the batch (and each view, for SSL) gets
its own random parameters, drawn from the ``torch.Generator`` passed in: the same generator
state and the same input give bit-identical output on CPU.

Conventions
-----------
- ``images``: float tensor ``(B, C, H, W)``, already normalised per volume (z-scored MR, whose
  background is negative; CT windowed to about [-1, 1]). Nothing here assumes [0, 1] or
  integer ranges, and no operation clips intensities.
- ``masks``: integer tensor ``(B, H, W)`` of class ids (0 = background).
- ``generator``: a ``torch.Generator`` on any device. Random parameters are drawn on the
  generator's device and moved to the images' device.
- Geometry: one affine matrix per sample (crop box, scale, rotation, translation and flips
  folded together), then a single ``affine_grid`` + ``grid_sample`` call per batch
  (``align_corners=False``, so the identity matrix reproduces the input exactly up to
  float rounding). Images are resampled bilinearly and areas outside the input are filled
  with each image's own minimum; masks are resampled with nearest neighbour and filled
  with 0 (background).
- Intensity units: brightness shifts are in units of each image's standard deviation,
  contrast scales each image about its own mean, gamma maps each image to [0, 1] by its own
  min/max and back, noise std is in the intensity units of the (normalised) input.
  Brightness, contrast and noise never clip, and gamma keeps each image's min and max, so
  no setting can turn a non-constant image into a constant (blank) one.

Classes
-------
- :class:`SSLAugment`: two independent views of each image for BYOL / SimCLR / HSSL.
- :class:`SegAugment`: joint image / mask augmentation for segmentation fine-tuning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field, fields

import torch
import torch.nn.functional as F

from medssl_utils.errors import close_matches, ParameterError
from medssl_utils.validate import check_keywords

__all__ = ["SSL_PRESETS", "SSLAugment", "SegAugment", "check_augment", "ssl_preset"]

_EPS = 1e-6


# --------------------------------------------------------------------------- parameter checks
def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _interval(lo: float, hi: float, lo_open: bool, hi_open: bool) -> str:
    return f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"


def _number(name: str, value, lo: float, hi: float, lo_open=False, hi_open=False) -> float:
    """Return ``float(value)`` or raise :class:`ParameterError` naming ``name`` and the range."""
    ok = _is_number(value) and (value > lo if lo_open else value >= lo)
    ok = ok and (value < hi if hi_open else value <= hi)
    if not ok:
        raise ParameterError(
            f"{name}={value!r} is out of range; expected a number in "
            f"{_interval(lo, hi, lo_open, hi_open)}"
        )
    return float(value)


def _pair(name: str, value, lo: float, hi: float, lo_open=False, hi_open=False) -> tuple[float, float]:
    """Validate a ``(low, high)`` range whose ends both lie in the given interval."""
    if not isinstance(value, (tuple, list)) or len(value) != 2:
        raise ParameterError(
            f"{name}={value!r} must be a pair (low, high) with values in "
            f"{_interval(lo, hi, lo_open, hi_open)}"
        )
    a = _number(f"{name}[0]", value[0], lo, hi, lo_open, hi_open)
    b = _number(f"{name}[1]", value[1], lo, hi, lo_open, hi_open)
    if a > b:
        raise ParameterError(f"{name}={value!r} must have low <= high")
    return (a, b)


def _prob(name: str, value) -> float:
    return _number(name, value, 0.0, 1.0)


def _view_probs(name: str, value) -> tuple[float, float]:
    """A probability, or a pair ``(view1, view2)`` of per-view probabilities."""
    if isinstance(value, (tuple, list)):
        if len(value) != 2:
            raise ParameterError(
                f"{name}={value!r} must be a probability in [0, 1] or a pair (view1, view2)"
            )
        return (_prob(f"{name}[0]", value[0]), _prob(f"{name}[1]", value[1]))
    p = _prob(name, value)
    return (p, p)


def _size(name: str, value) -> tuple[int, int] | None:
    """``None``, a positive int (square) or a pair of positive ints ``(height, width)``."""
    if value is None:
        return None
    items = (value, value) if not isinstance(value, (tuple, list)) else tuple(value)
    if len(items) != 2 or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in items):
        raise ParameterError(
            f"{name}={value!r} must be None, a positive int or a pair (height, width) of positive ints"
        )
    return (int(items[0]), int(items[1]))


def _set(obj, name: str, value) -> None:
    object.__setattr__(obj, name, value)  # normalise a field of a frozen dataclass


def _check_inputs(images, masks=None) -> None:
    if not isinstance(images, torch.Tensor) or images.dim() != 4 or not images.is_floating_point():
        got = tuple(images.shape) if isinstance(images, torch.Tensor) else type(images).__name__
        raise ParameterError(f"images must be a float tensor of shape (B, C, H, W); got {got}")
    if masks is not None:
        b, _, h, w = images.shape
        if (
            not isinstance(masks, torch.Tensor)
            or masks.is_floating_point()
            or tuple(masks.shape) != (b, h, w)
        ):
            got = (masks.dtype, tuple(masks.shape)) if isinstance(masks, torch.Tensor) else type(masks).__name__
            raise ParameterError(f"masks must be an integer tensor of shape {(b, h, w)}; got {got}")


def _check_generator(generator) -> None:
    if not isinstance(generator, torch.Generator):
        raise ParameterError(
            f"generator must be a torch.Generator (e.g. torch.Generator().manual_seed(0)); "
            f"got {type(generator).__name__}"
        )


# --------------------------------------------------------------------------- random draws
def _uniform(generator: torch.Generator, shape, device) -> torch.Tensor:
    """U[0, 1) float32 draws made on the generator's device, returned on ``device``."""
    return torch.rand(shape, generator=generator, device=generator.device).to(device)


def _between(u: torch.Tensor, lo: float, hi: float) -> torch.Tensor:
    return lo + u * (hi - lo)


# --------------------------------------------------------------------------- geometry
def _theta(a11, a12, a21, a22, tx, ty, in_hw, out_hw) -> torch.Tensor:
    """Normalised ``(B, 2, 3)`` matrix for ``affine_grid`` from a pixel-space affine.

    The pixel-space affine maps an output pixel position (offset from the output centre, in
    output pixels) to an input position (offset from the input centre, in input pixels):
    ``x_in = a11 * x_out + a12 * y_out + tx``, ``y_in = a21 * x_out + a22 * y_out + ty``.
    Working in pixels keeps rotations correct for non-square images.
    """
    (h, w), (oh, ow) = in_hw, out_hw
    row0 = torch.stack([a11 * (ow / w), a12 * (oh / w), tx * (2.0 / w)], dim=1)
    row1 = torch.stack([a21 * (ow / h), a22 * (oh / h), ty * (2.0 / h)], dim=1)
    return torch.stack([row0, row1], dim=1)


def _resample(x: torch.Tensor, theta: torch.Tensor, out_hw, mode: str) -> torch.Tensor:
    """Warp ``x`` (B, C, H, W) by ``theta`` (B, 2, 3) to ``(B, C, *out_hw)`` in one call.

    Points outside the input read 0; callers shift ``x`` beforehand to choose the fill value.
    """
    grid = F.affine_grid(theta.to(x.dtype), [x.shape[0], x.shape[1], *out_hw], align_corners=False)
    return F.grid_sample(x, grid, mode=mode, padding_mode="zeros", align_corners=False)


def _warp_images(images: torch.Tensor, theta: torch.Tensor, out_hw) -> torch.Tensor:
    """Bilinear warp; area outside the input is filled with each image's minimum."""
    low = images.amin(dim=(1, 2, 3), keepdim=True)
    return _resample(images - low, theta, out_hw, "bilinear") + low


def _warp_masks(masks: torch.Tensor, theta: torch.Tensor, out_hw) -> torch.Tensor:
    """Nearest-neighbour warp of integer masks (B, H, W); area outside the input becomes 0."""
    out = _resample(masks.unsqueeze(1).to(torch.float32), theta.to(torch.float32), out_hw, "nearest")
    return out.squeeze(1).round().to(masks.dtype)


# --------------------------------------------------------------------------- intensity
def _col(u: torch.Tensor, i: int, dtype) -> torch.Tensor:
    """Column ``i`` of a (B, K) draw matrix, shaped (B, 1, 1, 1) for broadcasting."""
    return u[:, i].to(dtype).view(-1, 1, 1, 1)


def _gaussian_blur(x: torch.Tensor, sigma: torch.Tensor, radius: int) -> torch.Tensor:
    """Separable Gaussian blur with one kernel per sample.

    x: (B, C, H, W); sigma: (B,) in pixels; kernel width ``2 * radius + 1``. Each pass
    takes sliding windows (``unfold``, a view) of the replicate-padded batch and weights
    them with that sample's kernel in one ``einsum``, so the whole batch is blurred by two
    batched calls (on CPU this is about twice as fast as a grouped convolution).
    """
    offsets = torch.arange(-radius, radius + 1, device=x.device, dtype=x.dtype)
    kernel = torch.exp(-(offsets**2) / (2 * sigma.to(x.dtype).view(-1, 1) ** 2))
    kernel = kernel / kernel.sum(dim=1, keepdim=True)  # (B, K)
    size = 2 * radius + 1
    rows = F.pad(x, (radius, radius, 0, 0), mode="replicate").unfold(3, size, 1)
    x = torch.einsum("bchwk,bk->bchw", rows, kernel)
    cols = F.pad(x, (0, 0, radius, radius), mode="replicate").unfold(2, size, 1)
    return torch.einsum("bchwk,bk->bchw", cols, kernel)


def _intensity(x: torch.Tensor, generator: torch.Generator, aug, probs: dict) -> torch.Tensor:
    """Contrast + brightness, gamma, blur and noise, each applied per sample with its probability.

    ``aug`` supplies the strengths (brightness, contrast, gamma, blur_sigma, noise_std);
    ``probs`` the probabilities for this view. The same number of uniform draws is made
    whatever the probabilities, so changing one probability does not shift the others.
    Samples not selected for an operation are returned bit-identical by that operation.
    """
    b, dt = x.shape[0], x.dtype
    u = _uniform(generator, (b, 9), x.device)
    dims = (1, 2, 3)

    # brightness / contrast, applied together with probability jitter_p
    mean = x.mean(dim=dims, keepdim=True)
    std = x.std(dim=dims, keepdim=True, unbiased=False)
    factor = torch.exp(math.log1p(aug.contrast) * (2 * _col(u, 1, dt) - 1))  # log-uniform, > 0
    shift = aug.brightness * (2 * _col(u, 2, dt) - 1) * std
    if probs["jitter_p"] > 0:
        x = torch.where(_col(u, 0, dt) < probs["jitter_p"], (x - mean) * factor + mean + shift, x)

    # gamma on [0, 1] by each image's min / max, mapped back to its own range
    if probs["gamma_p"] > 0:
        low = x.amin(dim=dims, keepdim=True)
        span = x.amax(dim=dims, keepdim=True) - low
        gamma = torch.exp(_between(_col(u, 4, dt), math.log(aug.gamma[0]), math.log(aug.gamma[1])))
        unit = ((x - low) / span.clamp_min(_EPS)).clamp(0.0, 1.0)
        use = (_col(u, 3, dt) < probs["gamma_p"]) & (span > _EPS)
        x = torch.where(use, unit.pow(gamma) * span + low, x)

    # Gaussian blur with per-sample sigma (pixels)
    use = _col(u, 5, dt) < probs["blur_p"]
    if probs["blur_p"] > 0 and bool(use.any()):
        sigma = _between(u[:, 6], *aug.blur_sigma)
        radius = max(1, math.ceil(3 * aug.blur_sigma[1]))
        x = torch.where(use, _gaussian_blur(x, sigma, radius), x)

    # additive Gaussian noise, std in input intensity units
    use = _col(u, 7, dt) < probs["noise_p"]
    if probs["noise_p"] > 0 and bool(use.any()):
        level = _between(_col(u, 8, dt), *aug.noise_std)
        noise = torch.randn(x.shape, generator=generator, device=generator.device).to(x.device, dt)
        x = torch.where(use, x + noise * level, x)
    return x


def _equalize(x: torch.Tensor, generator: torch.Generator, p: float, gamma: tuple[float, float]) -> torch.Tensor:
    """Histogram equalisation with random tie-breaking, then a random gamma, per sample with probability ``p``.

    Each selected image is replaced by the ranks of its pixels (ties broken at random, so the
    histogram is exactly uniform whatever the modality: CT's clipped window edges and MR's
    background alike), raised to a gamma drawn log-uniformly from ``gamma``, and scaled back to
    the image's own mean and standard deviation. The spatial structure is kept; every
    first-order intensity statistic (range, quantiles, saturation) is gone, so a classifier
    cannot tell a dataset or modality from them (``benchmarks/hssl_levels.py`` measures it).
    Two uniform draws per sample are made whatever ``p``.
    """
    b, dt = x.shape[0], x.dtype
    u = _uniform(generator, (b, 2), x.device)
    use = _col(u, 0, dt) < p
    if p <= 0 or not bool(use.any()):
        return x
    flat = x.flatten(1)
    span = (flat.amax(1, keepdim=True) - flat.amin(1, keepdim=True)).clamp_min(_EPS)
    jitter = _uniform(generator, flat.shape, x.device).to(dt) * span * 1e-6  # breaks exact ties only
    ranks = (flat + jitter).argsort(1).argsort(1).to(dt) / max(flat.shape[1] - 1, 1)
    g = torch.exp(_between(u[:, 1:2].to(dt), math.log(gamma[0]), math.log(gamma[1])))
    y = ranks.pow(g)
    y = (y - y.mean(1, keepdim=True)) / y.std(1, keepdim=True, unbiased=False).clamp_min(_EPS)
    y = y * flat.std(1, keepdim=True, unbiased=False) + flat.mean(1, keepdim=True)
    return torch.where(use, y.view_as(x), x)


def _check_intensity(aug, per_view: bool) -> None:
    """Validate and normalise the intensity fields shared by both augmentations."""
    for name in ("jitter_p", "gamma_p", "blur_p", "noise_p"):
        value = getattr(aug, name)
        _set(aug, name, _view_probs(name, value) if per_view else _prob(name, value))
    _set(aug, "brightness", _number("brightness", aug.brightness, 0.0, 10.0))
    _set(aug, "contrast", _number("contrast", aug.contrast, 0.0, 10.0))
    _set(aug, "gamma", _pair("gamma", aug.gamma, 0.0, 10.0, lo_open=True))
    _set(aug, "blur_sigma", _pair("blur_sigma", aug.blur_sigma, 0.0, 50.0, lo_open=True))
    _set(aug, "noise_std", _pair("noise_std", aug.noise_std, 0.0, 10.0))


def _p(default, doc: str):
    """A dataclass field with a one-line description (shown by ``describe()``)."""
    return field(default=default, metadata={"doc": doc})


class _Describe:
    """``describe()`` and ``config()`` for the augmentation dataclasses."""

    def config(self) -> dict:
        """The parameters as a plain dict (JSON-serialisable), e.g. for a run's record."""
        return {f.name: getattr(self, f.name) for f in fields(self)}

    def describe(self) -> str:
        """A multi-line table of the parameters, their values and their meaning."""
        lines = [f"{type(self).__name__}"]
        for f in fields(self):
            lines.append(f"  {f.name:<11} = {getattr(self, f.name)!r:<26} {f.metadata.get('doc', '')}")
        return "\n".join(lines)


# --------------------------------------------------------------------------- SSL
@dataclass(frozen=True, kw_only=True)
class SSLAugment(_Describe):
    """Two-view augmentation for self-supervised pretraining on grayscale images.

    The BYOL / SimCLR recipe adapted to grayscale, intensity-normalised MR/CT and to small
    images: random resized crop -> flips (-> optional rotation), then brightness/contrast
    jitter, random gamma, optional Gaussian blur and additive noise. Colour (saturation, hue,
    grayscale) and solarisation are left out: they have no meaning on one normalised channel.

    Defaults fit the small images of CPU studies (64 px) as well as 224 px ones: crop scale
    (0.2, 1) and **no blur** — BYOL's blur (sigma up to 2 px on every first view) was made for
    224 px photographs; at 64 px sigma 1 keeps 60 % and sigma 2 keeps 28 % of the contrast
    between cardiac cavity and myocardium, teaching the encoder to ignore the boundary the
    segmentation needs (solo-learn and lightly switch blur off for 32 px images). Named
    settings: :data:`SSL_PRESETS` / :func:`ssl_preset` (``"byol"``: BYOL's blur with sigma
    scaled to the image size; ``"work-a"``: Work A's crop, flip and brightness/contrast).

    Every ``*_p`` probability is either one number (both views) or a pair
    ``(view1, view2)``; ``blur_p=(1.0, 0.1)`` is BYOL's asymmetric blur, ``blur_p=0.5`` SimCLR's.

    Random resized crop: a box of ``scale`` x the image area (uniform) and aspect ratio
    ``ratio`` (log-uniform, width/height in pixels) is placed uniformly inside the image
    and resampled (bilinear, no anti-aliasing) to ``output_size``. When the box would be
    wider (taller) than the image it is clamped to the full width (height) and made
    taller (wider) so that its area is kept; ``scale=(1, 1)`` therefore always gives the
    whole image.

    Call: ``view1, view2 = aug(images, generator)`` with images (B, C, H, W) float; each
    view is ``(B, C, *output_size)``, same dtype and device. ``aug.view(images, generator,
    index)`` returns one view using the probabilities of view ``index`` (0 or 1).
    """

    output_size: int | tuple[int, int] | None = _p(None, "(H, W) of each view; None = input size")
    scale: tuple[float, float] = _p((0.2, 1.0), "crop area as a fraction of the image, in (0, 1]")
    ratio: tuple[float, float] = _p((3 / 4, 4 / 3), "crop aspect ratio w/h (log-uniform)")
    rotation: float = _p(0.0, "max |rotation| in degrees, in [0, 180]")
    hflip_p: float | tuple[float, float] = _p(0.5, "probability of a left-right flip")
    vflip_p: float | tuple[float, float] = _p(0.0, "probability of an up-down flip")
    jitter_p: float | tuple[float, float] = _p(0.8, "probability of brightness/contrast jitter")
    brightness: float = _p(0.4, "max |shift| in units of the image's std")
    contrast: float = _p(0.4, "factor log-uniform in [1/(1+c), 1+c] about the image mean")
    gamma_p: float | tuple[float, float] = _p(0.5, "probability of a random gamma")
    gamma: tuple[float, float] = _p((0.7, 1.5), "gamma range (log-uniform) on min/max-scaled image")
    blur_p: float | tuple[float, float] = _p(0.0, "probability of Gaussian blur (BYOL: 1.0, 0.1)")
    blur_sigma: tuple[float, float] = _p((0.1, 2.0), "blur sigma range in output pixels")
    noise_p: float | tuple[float, float] = _p(0.2, "probability of additive Gaussian noise")
    noise_std: tuple[float, float] = _p((0.0, 0.1), "noise std range in input intensity units")
    equalize_p: float | tuple[float, float] = _p(0.0, "probability of histogram equalisation + random gamma "
                                                      "(the view's intensity histogram then tells nothing)")

    def __post_init__(self) -> None:
        _set(self, "output_size", _size("output_size", self.output_size))
        _set(self, "equalize_p", _view_probs("equalize_p", self.equalize_p))
        _set(self, "scale", _pair("scale", self.scale, 0.0, 1.0, lo_open=True))
        _set(self, "ratio", _pair("ratio", self.ratio, 0.0, 100.0, lo_open=True))
        _set(self, "rotation", _number("rotation", self.rotation, 0.0, 180.0))
        _set(self, "hflip_p", _view_probs("hflip_p", self.hflip_p))
        _set(self, "vflip_p", _view_probs("vflip_p", self.vflip_p))
        _check_intensity(self, per_view=True)

    def __call__(self, images: torch.Tensor, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
        """Two views of every image, with independent random parameters per sample and view."""
        return self.view(images, generator, 0), self.view(images, generator, 1)

    def views_with_geometry(self, images: torch.Tensor, generator: torch.Generator
                            ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(view1, view2, theta1, theta2)``: the two views of :meth:`__call__` (same draws, same
        output) and their geometry. ``theta_k`` (B, 2, 3) maps a position in view k (normalised
        coordinates, ``align_corners=False``: -1..1 across the view) to the same anatomical
        position in the input image (normalised likewise): ``p_in = theta[:, :, :2] @ p_view +
        theta[:, :, 2]``. Dense (per-pixel) self-supervision uses it to find where a point of
        one view lies in the other.
        """
        v1, th1 = self._view(images, generator, 0)
        v2, th2 = self._view(images, generator, 1)
        return v1, v2, th1, th2

    def view(self, images: torch.Tensor, generator: torch.Generator, index: int = 0) -> torch.Tensor:
        """One augmented view ``(B, C, *output_size)`` using the probabilities of view ``index``."""
        return self._view(images, generator, index)[0]

    def _view(self, images: torch.Tensor, generator: torch.Generator, index: int) -> tuple[torch.Tensor, torch.Tensor]:
        _check_inputs(images)
        _check_generator(generator)
        if index not in (0, 1):
            raise ParameterError(f"index={index!r} is not allowed; expected 0 or 1")
        b, _, h, w = images.shape
        out_hw = self.output_size or (h, w)
        u = _uniform(generator, (b, 7), images.device).to(torch.float32)

        # crop box in input pixels, area kept when the box is clamped to the image
        area = _between(u[:, 0], *self.scale) * (h * w)
        aspect = torch.exp(_between(u[:, 1], math.log(self.ratio[0]), math.log(self.ratio[1])))
        bw, bh = torch.sqrt(area * aspect), torch.sqrt(area / aspect)
        too_wide, too_tall = bw > w, bh > h
        bw, bh = torch.where(too_wide, float(w), bw), torch.where(too_wide, area / w, bh)
        bw, bh = torch.where(too_tall, area / h, bw), torch.where(too_tall, float(h), bh)
        cx = _between(u[:, 2], -1.0, 1.0) * (w - bw) / 2  # box centre offset from image centre
        cy = _between(u[:, 3], -1.0, 1.0) * (h - bh) / 2

        angle = torch.deg2rad(_between(u[:, 4], -self.rotation, self.rotation))
        fx = torch.where(u[:, 5] < self.hflip_p[index], -1.0, 1.0)
        fy = torch.where(u[:, 6] < self.vflip_p[index], -1.0, 1.0)
        sx, sy = fx * bw / out_hw[1], fy * bh / out_hw[0]  # output pixel -> box pixel
        cos, sin = torch.cos(angle), torch.sin(angle)
        theta = _theta(cos * sx, -sin * sy, sin * sx, cos * sy, cx, cy, (h, w), out_hw)

        x = _warp_images(images, theta, out_hw)
        probs = {k: getattr(self, k)[index] for k in ("jitter_p", "gamma_p", "blur_p", "noise_p")}
        x = _intensity(x, generator, self, probs)
        return _equalize(x, generator, self.equalize_p[index], self.gamma), theta


#: Named SSLAugment settings (:func:`ssl_preset`); values override SSLAugment's defaults.
SSL_PRESETS = {
    # medssl's default: SSLAugment's own defaults (crop 0.2-1, flip, jitter, gamma, noise, no blur)
    "medssl": {},
    # BYOL (Grill et al. 2020) on one channel: crop 0.08-1, flip, jitter 0.8 (brightness/contrast 0.4),
    # blur 1.0 / 0.1 with sigma 0.1-2.0 px at 256 px scaled to the image (0.025-0.5 px at 64 px)
    "byol": {"scale": (0.08, 1.0), "jitter_p": 0.8, "brightness": 0.4, "contrast": 0.4, "gamma_p": 0.0,
             "blur_p": (1.0, 0.1), "blur_sigma": (0.1, 2.0), "noise_p": 0.0},
    # Work A (SSL-MedSeg configs/augmentations/acdc.yaml): crop 0.08-1, flip 0.5, jitter 0.8 with
    # brightness and contrast 0.2, no blur, no solarisation (saturation / hue / grayscale: no meaning here)
    "work-a": {"scale": (0.08, 1.0), "hflip_p": 0.5, "jitter_p": 0.8, "brightness": 0.2, "contrast": 0.2,
               "gamma_p": 0.0, "blur_p": 0.0, "noise_p": 0.0},
}


def ssl_preset(name: str, image_size: int) -> dict:
    """The keyword arguments of SSLAugment for the named preset (:data:`SSL_PRESETS`) at ``image_size``.

    Blur sigmas are given for 256 px and scaled by ``image_size / 256`` (BYOL's sigma range
    (0.1, 2.0) at 224-256 px crops becomes (0.025, 0.5) at 64 px).
    """
    if name not in SSL_PRESETS:
        close = close_matches(str(name), SSL_PRESETS)
        raise ParameterError(f"augment_preset={name!r}: expected one of {list(SSL_PRESETS)}"
                             + (f"; did you mean {close[0]}?" if close else ""))
    out = dict(SSL_PRESETS[name])
    if "blur_sigma" in out:
        lo, hi = out["blur_sigma"]
        out["blur_sigma"] = (lo * image_size / 256, hi * image_size / 256)
    return out


# --------------------------------------------------------------------------- segmentation
@dataclass(frozen=True, kw_only=True)
class SegAugment(_Describe):
    """Joint image / mask augmentation for segmentation fine-tuning.

    Geometry (identical for image and mask, one affine per sample): flips, rotation by a
    uniform angle in ``[-rotation, rotation]`` degrees, zoom by a uniform factor in
    ``scale`` (> 1 enlarges the content), translation by a uniform fraction in
    ``[-translate, translate]`` of the image size, then a crop of ``output_size`` at a
    uniformly drawn integer pixel offset (Work A: ``output_size=224``). When
    ``output_size`` is larger than the input the image is placed at a random integer
    offset and padded. Images are resampled bilinearly and padded with each image's
    minimum; masks with nearest neighbour and padded with 0.

    Intensity (image only): brightness/contrast jitter, random gamma, optional Gaussian
    blur and additive noise, with the same meaning as in :class:`SSLAugment`.

    Call: ``images, masks = aug(images, masks, generator)`` with images (B, C, H, W) float
    and masks (B, H, W) integer (or ``None``); returns images ``(B, C, *output_size)`` and
    masks ``(B, *output_size)`` of the input dtypes.
    """

    output_size: int | tuple[int, int] | None = _p(None, "(H, W) of the random crop; None = no crop")
    scale: tuple[float, float] = _p((0.9, 1.1), "zoom factor range (> 1 enlarges the content)")
    rotation: float = _p(10.0, "max |rotation| in degrees, in [0, 180]")
    translate: float = _p(0.05, "max |shift| as a fraction of the image size, in [0, 1]")
    hflip_p: float = _p(0.5, "probability of a left-right flip")
    vflip_p: float = _p(0.0, "probability of an up-down flip")
    jitter_p: float = _p(0.5, "probability of brightness/contrast jitter")
    brightness: float = _p(0.2, "max |shift| in units of the image's std")
    contrast: float = _p(0.2, "factor log-uniform in [1/(1+c), 1+c] about the image mean")
    gamma_p: float = _p(0.3, "probability of a random gamma")
    gamma: tuple[float, float] = _p((0.8, 1.25), "gamma range (log-uniform) on min/max-scaled image")
    blur_p: float = _p(0.0, "probability of Gaussian blur")
    blur_sigma: tuple[float, float] = _p((0.1, 1.0), "blur sigma range in output pixels")
    noise_p: float = _p(0.2, "probability of additive Gaussian noise")
    noise_std: tuple[float, float] = _p((0.0, 0.05), "noise std range in input intensity units")

    def __post_init__(self) -> None:
        _set(self, "output_size", _size("output_size", self.output_size))
        _set(self, "scale", _pair("scale", self.scale, 0.0, 10.0, lo_open=True))
        _set(self, "rotation", _number("rotation", self.rotation, 0.0, 180.0))
        _set(self, "translate", _number("translate", self.translate, 0.0, 1.0))
        _set(self, "hflip_p", _prob("hflip_p", self.hflip_p))
        _set(self, "vflip_p", _prob("vflip_p", self.vflip_p))
        _check_intensity(self, per_view=False)

    def __call__(
        self, images: torch.Tensor, masks: torch.Tensor | None, generator: torch.Generator
    ) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Augmented ``(images, masks)``; see the class docstring for shapes."""
        _check_inputs(images, masks)
        _check_generator(generator)
        b, _, h, w = images.shape
        oh, ow = self.output_size or (h, w)
        u = _uniform(generator, (b, 8), images.device).to(torch.float32)

        zoom = _between(u[:, 0], *self.scale)
        angle = torch.deg2rad(_between(u[:, 1], -self.rotation, self.rotation))
        tx = _between(u[:, 2], -1.0, 1.0) * self.translate * w
        ty = _between(u[:, 3], -1.0, 1.0) * self.translate * h
        fx = torch.where(u[:, 4] < self.hflip_p, -1.0, 1.0)
        fy = torch.where(u[:, 5] < self.vflip_p, -1.0, 1.0)
        # crop offset: integer top-left corner, so a pure crop copies pixels exactly
        x0 = _integer(u[:, 6], min(0, w - ow), max(0, w - ow))
        y0 = _integer(u[:, 7], min(0, h - oh), max(0, h - oh))
        cx, cy = x0 + (ow - w) / 2, y0 + (oh - h) / 2  # crop centre offset from image centre

        # forward map q = zoom * R(angle) * flip * p + t; the grid needs its inverse applied
        # to the cropped output position (p_out + c): p = flip * R(-angle) * (p_out + c - t) / zoom
        cos, sin = torch.cos(angle) / zoom, torch.sin(angle) / zoom
        a11, a12, a21, a22 = fx * cos, fx * sin, -fy * sin, fy * cos
        dx, dy = cx - tx, cy - ty
        theta = _theta(a11, a12, a21, a22, a11 * dx + a12 * dy, a21 * dx + a22 * dy, (h, w), (oh, ow))

        out_images = _warp_images(images, theta, (oh, ow))
        out_masks = None if masks is None else _warp_masks(masks, theta, (oh, ow))
        probs = {k: getattr(self, k) for k in ("jitter_p", "gamma_p", "blur_p", "noise_p")}
        return _intensity(out_images, generator, self, probs), out_masks


def _integer(u: torch.Tensor, lo: int, hi: int) -> torch.Tensor:
    """Uniform integers in ``[lo, hi]`` (as float) from U[0, 1) draws ``u``."""
    return (lo + torch.floor(u * (hi - lo + 1))).clamp(max=hi)


def check_augment(augment, which: str, image_size: int, base: Mapping | None = None) -> dict:
    """``augment`` (keyword arguments of :class:`~medssl_utils.data.transforms.SSLAugment` or
    ``SegAugment``, named by ``which``) checked by name and type, then by building the
    augmentation as the training loop does (over ``base``, the method's defaults). Returns it."""
    cls = {"SSLAugment": SSLAugment, "SegAugment": SegAugment}[which]
    augment = check_keywords("augment", augment, cls, what=which,
                             set_by={"output_size": f"image_size ({image_size}) sets it; change image_size"})
    try:
        cls(output_size=image_size, **{**(base or {}), **augment})
    except ParameterError as exc:
        raise ParameterError(f"augment.{exc}") from None
    return augment

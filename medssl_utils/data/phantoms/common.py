"""Building blocks shared by every phantom: random fields, soft shapes, noise, file helpers.

Conventions used throughout the phantom package:

* Lengths are in millimetres unless a name ends in ``_vox`` (voxels) or ``_px`` (pixels).
* Arrays that hold a stack of 2D slices are shaped (Z, X, Y) while they are being built
  (slices first, so per-slice parameters broadcast as ``p[:, None, None]``) and are turned
  into the NIfTI voxel order (X, Y, Z) only when written.
* "Soft" masks hold the fraction of a pixel covered by a shape (0..1). They are built from
  a signed distance ``d`` (negative inside) with a linear ramp one pixel wide, which is a
  cheap model of in-plane partial-volume averaging; hard label maps threshold them at 0.5.
* Every random draw comes from a :class:`numpy.random.Generator` passed in explicitly;
  :func:`case_rng` derives one per case from (seed, domain, case number), so cases can be
  generated in any order (or in parallel) and still come out identical.
"""

from __future__ import annotations

import math
import struct
from pathlib import Path

import numpy as np
from scipy import ndimage

from medssl_utils.errors import ParameterError

#: Most cases a phantom may have (spec option ``cases`` and ``medssl data phantoms --cases``).
#: Public sets hold up to ~1,250 cases (BraTS 2021). Measured here: the default cardiac phantom
#: (60 + 20 testing patients) is 437 MB and 27-34 s, so 2,000 cases (+666 testing) are ~15 GB and
#: ~15 minutes; 2,000,000 would be ~15 TB and ~10 days, which is refused before anything is written.
MAX_CASES = 2000


__all__ = [
    "case_rng",
    "check_seed",
    "smooth_field",
    "soft_inside",
    "ellipse_sdf",
    "rician",
    "NoisePool",
    "write_appledouble",
    "Canvas",
    "ellipsoid_sdf",
]


def check_seed(seed) -> int:
    """Validate a user seed: a non-negative integer (numpy's SeedSequence refuses negatives)."""
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or int(seed) < 0:
        raise ParameterError(f"seed={seed!r}: expected a non-negative integer")
    return int(seed)


def case_rng(seed: int, domain: int, case: int) -> np.random.Generator:
    """Independent generator for one case, derived from (seed, domain code, case number)."""
    return np.random.default_rng([int(seed), int(domain), int(case)])


def smooth_field(rng: np.random.Generator, shape, corr_vox, *, dtype=np.float32) -> np.ndarray:
    """A smooth Gaussian random field of the given ``shape`` with mean 0 and std ~1.

    ``corr_vox`` (a number or one per axis) is the correlation length in voxels. The field
    is drawn on a coarse grid (one sample per ``corr_vox``), smoothed there, and upsampled
    linearly, which costs little even for large volumes.
    """
    shape = tuple(int(s) for s in shape)
    corr = np.broadcast_to(np.asarray(corr_vox, dtype=float), (len(shape),))
    corr = np.maximum(corr, 1.0)
    coarse_shape = tuple(int(np.ceil(s / c)) + 3 for s, c in zip(shape, corr))
    field = ndimage.gaussian_filter(rng.standard_normal(coarse_shape), 0.8, mode="wrap").astype(dtype)
    for axis, (n, c) in enumerate(zip(shape, corr)):
        field = _upsample_linear(field, axis, n, c)
    field -= field.mean()
    std = float(field.std())
    return field / (std if std > 0 else 1.0)


def _upsample_linear(a: np.ndarray, axis: int, n: int, step: float) -> np.ndarray:
    """Sample ``a`` along ``axis`` at positions 1 + i/step (i < n) with linear interpolation."""
    pos = 1.0 + np.arange(n) / step
    i0 = np.floor(pos).astype(np.intp)
    w = (pos - i0).astype(a.dtype)
    shape = [1] * a.ndim
    shape[axis] = n
    w = w.reshape(shape)
    lo = np.take(a, i0, axis=axis)
    if not np.any(w):
        return lo
    hi = np.take(a, np.minimum(i0 + 1, a.shape[axis] - 1), axis=axis)
    return lo + (hi - lo) * w


def soft_inside(sdf: np.ndarray, width) -> np.ndarray:
    """Fraction of a pixel inside a shape, from its signed distance ``sdf`` (mm, <0 inside).

    ``width`` (mm, usually the pixel size) is the width of the linear ramp across the edge.
    Returns float32 values in 0..1 with the same shape as ``sdf``.
    """
    out = np.asarray(0.5 - sdf / width, dtype=np.float32)
    return np.clip(out, 0.0, 1.0, out=out)


def ellipse_sdf(x: np.ndarray, y: np.ndarray, a, b) -> np.ndarray:
    """Approximate signed distance (mm, <0 inside) to an axis-aligned ellipse.

    ``x``, ``y`` are coordinates relative to the centre (mm); ``a``, ``b`` the semi-axes
    along x and y (mm, broadcastable). Uses the first-order estimate ``(q-1)/|grad q|`` with
    ``q = sqrt((x/a)^2 + (y/b)^2)``, which is exact on the boundary and good near it.
    """
    a = np.maximum(a, 1e-3)
    b = np.maximum(b, 1e-3)
    xa = x / a
    yb = y / b
    q = np.sqrt(xa * xa + yb * yb) + 1e-6
    grad = np.sqrt((xa / a) ** 2 + (yb / b) ** 2) / q + 1e-6
    return (q - 1.0) / grad


def rician(noise, signal: np.ndarray, sigma) -> np.ndarray:
    """Magnitude of a complex MR signal with Gaussian noise in both channels (Rician noise).

    ``noise`` is a :class:`numpy.random.Generator` or a :class:`NoisePool`; ``signal`` the
    noise-free magnitude (any shape), ``sigma`` the per-channel noise std (same units).
    Returns float32 of the same shape.
    """
    shape = signal.shape
    re = signal + sigma * noise.standard_normal(shape, dtype=np.float32)
    im = sigma * noise.standard_normal(shape, dtype=np.float32)
    return np.sqrt(re * re + im * im, dtype=np.float32)


class NoisePool:
    """Standard-normal noise drawn once and served from random offsets.

    Drawing fresh normals for every frame of every cine series dominates the phantom's run
    time; windows at random offsets of one pool of ``(1 + spare) * size`` values are
    independent enough for image noise (each window is a shifted, re-wrapped copy). Serves
    arrays of at most ``size`` elements.
    """

    def __init__(self, rng: np.random.Generator, size: int, spare: float = 1.0):
        self.rng = rng
        self.size = int(size)
        self.pool = rng.standard_normal(int(self.size * (1 + spare)) + 1, dtype=np.float32)

    def standard_normal(self, shape, dtype=np.float32) -> np.ndarray:
        n = int(np.prod(shape))
        if n > self.size:
            raise ValueError(f"NoisePool of size {self.size} cannot serve {n} values")
        start = int(self.rng.integers(0, self.pool.size - n + 1))
        return self.pool[start:start + n].reshape(shape).astype(dtype, copy=False)


def write_appledouble(path: Path) -> Path:
    """Write a small macOS AppleDouble resource-fork file (``._name``) as found in MSD archives.

    Layout: magic 0x00051607, version 0x00020000, 16 filler bytes, one entry (Finder info,
    id 9) of 32 zero bytes. Readers must skip such files; they are here so they get tested.
    """
    header = struct.pack(">II16sH", 0x00051607, 0x00020000, b"Mac OS X        ", 1)
    entry = struct.pack(">III", 9, len(header) + 12, 32)
    path = Path(path)
    path.write_bytes(header + entry + bytes(32))
    return path


class Canvas:
    """A 3D volume painted with soft shapes given in body coordinates (mm).

    The volume has shape (X, Y, Z) (NIfTI voxel order) and voxel ``spacing`` (mm). Voxel
    (i, j, k) lies at pixel-mm position (i*sx, j*sy, k*sz); the body frame is centred at
    ``centre_mm`` (pixel-mm) and rotated in-plane by ``angle`` (radians), which poses the
    whole anatomy in the field of view. Shapes are only evaluated inside the window of
    voxels their bounding sphere can reach, so many small shapes stay cheap.

    ``image`` (float32) and ``label`` (uint8) are painted in place.
    """

    def __init__(self, shape, spacing, centre_mm, *, angle: float = 0.0, fill: float = 0.0):
        self.shape = tuple(int(s) for s in shape)
        self.spacing = tuple(float(s) for s in spacing)
        self.centre = tuple(float(c) for c in centre_mm)
        self.angle = float(angle)
        self.image = np.full(self.shape, fill, dtype=np.float32)
        self.label = np.zeros(self.shape, dtype=np.uint8)
        self.edge = min(self.spacing[:2])  # width of the soft edge, mm

    def to_pixel_mm(self, point) -> np.ndarray:
        """Pixel-mm position of a body-frame point (x, y, z)."""
        c, s = math.cos(self.angle), math.sin(self.angle)
        x, y, z = point
        return np.array([c * x - s * y + self.centre[0], s * x + c * y + self.centre[1], z + self.centre[2]])

    def window(self, centre, radius: float) -> tuple[slice, slice, slice] | None:
        """Voxel window holding the body-frame sphere (centre, radius); None if outside."""
        p = self.to_pixel_mm(centre)
        win = []
        for axis in range(3):
            lo = int(math.floor((p[axis] - radius) / self.spacing[axis])) - 1
            hi = int(math.ceil((p[axis] + radius) / self.spacing[axis])) + 2
            lo, hi = max(lo, 0), min(hi, self.shape[axis])
            if lo >= hi:
                return None
            win.append(slice(lo, hi))
        return tuple(win)

    def full(self) -> tuple[slice, slice, slice]:
        return (slice(None),) * 3

    def grid(self, win) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Body-frame coordinates (mm) of the voxels in ``win``: x, y of shape (wx, wy, 1), z (1, 1, wz)."""
        ax = [np.arange(self.shape[a], dtype=np.float32)[win[a]] * self.spacing[a] - self.centre[a] for a in range(3)]
        px = ax[0][:, None, None]
        py = ax[1][None, :, None]
        c, s = np.float32(math.cos(self.angle)), np.float32(math.sin(self.angle))
        return c * px + s * py, -s * px + c * py, ax[2][None, None, :]

    def ellipsoid(self, centre, radii, *, yaw: float = 0.0, win=None, deform=None):
        """Soft coverage (0..1) of an ellipsoid; returns (window, coverage) or (None, None).

        ``radii`` are the semi-axes (mm) along the ellipsoid's own x, y (rotated by ``yaw``
        about z) and z. ``deform`` = (rng, amplitude_mm, correlation_mm) adds a smooth random
        offset to the surface (lumpy organs).
        """
        radii = np.asarray(radii, dtype=float)
        if win is None:
            extra = 3 * deform[1] if deform is not None else 0.0
            win = self.window(centre, float(radii.max()) + extra + 2 * self.edge)
            if win is None:
                return None, None
        x, y, z = self.grid(win)
        x = x - centre[0]
        y = y - centre[1]
        z = z - centre[2]
        if yaw:
            c, s = np.float32(math.cos(yaw)), np.float32(math.sin(yaw))
            x, y = c * x + s * y, -s * x + c * y
        sd = ellipsoid_sdf(x, y, z, radii)
        if deform is not None:
            rng, amp, corr = deform
            shape = sd.shape
            sd = sd + amp * smooth_field(rng, shape, [corr / sp for sp in self.spacing])
        return win, soft_inside(sd, self.edge)

    def cylinder(self, centre, radii, *, yaw: float = 0.0, z_range=None, win=None, deform=None):
        """Soft coverage of an elliptic cylinder along z; returns (window, coverage).

        ``centre`` (x, y) and ``radii`` (a, b) in mm; the coverage is computed once in-plane
        and has shape (wx, wy, 1) (or (wx, wy, wz) when ``z_range`` = (z0, z1) limits it),
        broadcasting along z, so long tubes and body outlines cost one slice.
        """
        radii = np.asarray(radii, dtype=float)
        if win is None:
            extra = 3 * deform[1] if deform is not None else 0.0
            w = self.window((centre[0], centre[1], 0.0), float(radii.max()) + extra + 2 * self.edge)
            if w is None:
                return None, None
            win = (w[0], w[1], slice(None))
        x, y, z = self.grid(win)
        x = x - centre[0]
        y = y - centre[1]
        if yaw:
            c, s = np.float32(math.cos(yaw)), np.float32(math.sin(yaw))
            x, y = c * x + s * y, -s * x + c * y
        sd = ellipse_sdf(x, y, radii[0], radii[1])
        if deform is not None:
            rng, amp, corr = deform
            sd = sd + amp * smooth_field(rng, sd.shape, [corr / sp for sp in self.spacing[:2]] + [1.0])
        cover = soft_inside(sd, self.edge)
        if z_range is not None:
            cover = cover * ((z >= z_range[0]) & (z <= z_range[1]))
        return win, cover

    def paint(self, win, cover, value, *, label: int | None = None) -> None:
        """Composite ``value`` (scalar or array for the window) with ``cover``; optionally label it."""
        if win is None:
            return
        sub = self.image[win]
        sub += (value - sub) * cover
        if label is not None:
            self.label[win][np.broadcast_to(cover > 0.5, sub.shape)] = label


def ellipsoid_sdf(x, y, z, radii) -> np.ndarray:
    """Approximate signed distance (mm, <0 inside) to an axis-aligned ellipsoid at the origin.

    First-order estimate ``(q-1)/|grad q|`` with ``q = |(x/a, y/b, z/c)|``; exact on the surface.
    """
    a, b, c = (max(float(r), 1e-3) for r in radii)
    xa, yb, zc = x / a, y / b, z / c
    q = np.sqrt(xa * xa + yb * yb + zc * zc) + np.float32(1e-6)
    grad = np.sqrt((xa / a) ** 2 + (yb / b) ** 2 + (zc / c) ** 2) / q + np.float32(1e-6)
    return (q - 1.0) / grad

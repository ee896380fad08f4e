"""Abdominal CT phantom (portal-venous phase), labels 1 liver and 2 liver tumour.

The anatomy model
=================
Every structure is a soft ellipsoid (or elliptic cylinder) placed in a body frame whose
x axis runs across the patient (liver at negative x), y from front (negative) to back and
z from feet to head. Positions and sizes are written for an adult (body ~330 x 230 mm)
and scaled by ``scale`` so the whole cross-section fits the small field of view that CT's
sub-millimetre pixels (0.7-0.9 mm) give a 192-240 matrix; slices are 2.5-5 mm thick.

Painted, from outside in: air (-1000 HU; -1024 outside the reconstruction circle), the
patient table, subcutaneous fat (~-100 HU), the abdominal-wall muscle ring (~45 HU),
visceral fat, spine (cancellous ~250 HU inside cortical ~800 HU, vertebral bodies
separated by discs), ribs in the upper slices, paraspinal and psoas muscles, aorta and
inferior vena cava (contrast ~130-200 HU), kidneys (enhancing cortex, low-density sinus),
spleen, stomach (fluid with an air cap), bowel loops with gas, a gallbladder (near water:
a hypodense look-alike of a tumour, unlabelled), and the liver (~90-130 HU) with bright
portal/hepatic vessels and 1-3 hypodense tumours (liver minus 30-70 HU). Organ surfaces
are made lumpy by smooth random offsets. The liver and tumours are finely textured, and the image
gets Gaussian noise with ~1 voxel correlation (sigma 8-20 HU), as CT reconstruction gives.
"""

from __future__ import annotations

import math

import numpy as np

from medssl_utils.data.phantoms.common import Canvas, smooth_field

DOMAIN_CODE = 2
LABELS = {"0": "background", "1": "liver", "2": "tumour"}


def make_case(rng: np.random.Generator):
    """One abdominal CT case.

    Returns ``(image, label, spacing)``: image int16 HU of shape (X, Y, Z), label uint8 of
    the same shape (0 background, 1 liver, 2 tumour), spacing (sx, sy, sz) in mm.
    """
    u = rng.uniform
    n = int(rng.integers(192, 241))
    sp = u(0.7, 0.9)
    sz = float(rng.choice([2.5, 3.0, 4.0, 5.0]))
    fov = n * sp
    s = fov * u(0.82, 0.94) / 330.0  # anatomy scale
    nz = int(np.clip(round(150.0 * s / sz), 16, 40))
    cv = Canvas((n, n, nz), (sp, sp, sz), (fov / 2 + u(-6, 6), fov / 2 + u(-4, 10), nz * sz / 2),
                angle=u(-0.08, 0.08), fill=-1000.0)
    z_half = nz * sz / 2 / s  # half the covered length, in adult mm
    zc = u(-15, 15)  # where the volume centre lies along the adult body

    def P(x, y, z):
        return (x * s, y * s, (z - zc) * s)

    def R(*r):
        return [v * s for v in r]

    big = 1e4  # mm: 'no limit' along z
    # body, fat, muscle wall, visceral fat
    bw, bh = u(150, 175), u(105, 125)
    fat = u(10, 30)
    win, c = cv.cylinder(P(0, 0, zc), R(bw, bh), win=cv.full(), deform=(rng, 4 * s, 60 * s))
    cv.paint(win, c, u(-110, -90))
    _, c = cv.cylinder(P(0, 0, zc), R(bw - fat, bh - fat), win=win)
    cv.paint(win, c, u(35, 55))
    _, cavity = cv.cylinder(P(0, 2, zc), R(bw - fat - 12, bh - fat - 10), win=win)
    cv.paint(win, cavity, u(-100, -80))
    # table under the patient (posterior)
    ty = bh + u(12, 30)
    _, c = cv.cylinder(P(0, ty + 260, zc), R(330, 265), win=win)
    _, c2 = cv.cylinder(P(0, ty + 260, zc), R(322, 258), win=win)
    cv.paint(win, np.clip(c - c2, 0, 1), u(-300, 50))

    vy = bh - u(45, 60)
    # kidneys (lower half): enhancing cortex, low sinus
    for side in (-1, 1):
        kc = P(side * u(60, 72), vy - 5, -45 + u(-10, 10))
        w, c = cv.ellipsoid(kc, R(24, 32, 48), yaw=side * 0.4, deform=(rng, 2 * s, 20 * s))
        cv.paint(w, c, u(150, 200))
        w, c = cv.ellipsoid(kc, R(10, 14, 25), yaw=side * 0.4)
        cv.paint(w, c, u(-20, 20))
    # spleen (upper, opposite the liver)
    w, c = cv.ellipsoid(P(u(70, 85), u(25, 45), 40), R(28, 55, 50), yaw=-0.6, deform=(rng, 4 * s, 30 * s))
    cv.paint(w, c, u(100, 125))
    # stomach: fluid with an anterior air cap
    sc = P(u(30, 50), u(-45, -25), 45)
    w, c = cv.ellipsoid(sc, R(40, 30, 40), deform=(rng, 5 * s, 30 * s))
    cv.paint(w, c, u(40, 50))
    w, c = cv.ellipsoid(sc, R(34, 25, 34), win=w)
    cv.paint(w, c, u(5, 30))
    w, c = cv.ellipsoid((sc[0], sc[1] - 18 * s, sc[2]), R(22, 8, 26))
    cv.paint(w, c, -1000.0)
    # bowel loops in the lower abdomen: wall, fluid or gas content
    for _ in range(int(rng.integers(6, 12))):
        bc = P(u(-60, 80), u(-80, 10), u(-90, 0))
        r = u(10, 18)
        w, c = cv.ellipsoid(bc, R(r, r * u(0.7, 1.0), r * u(1.0, 2.0)), yaw=u(0, math.pi))
        cv.paint(w, c, u(30, 50))
        w, c = cv.ellipsoid(bc, R(r - 3, (r - 3) * 0.8, r), yaw=u(0, math.pi))
        cv.paint(w, c, -1000.0 if u() < 0.5 else u(0, 30))

    # ribs: small bony ovals along the wall in the upper half
    for ang in np.linspace(-2.6, 2.6, int(rng.integers(8, 13))) + u(-0.1, 0.1):
        rx, ry = (bw - fat - 6) * math.cos(ang - math.pi / 2), (bh - fat - 6) * math.sin(ang - math.pi / 2)
        if ry > bh * 0.5:
            continue
        w, c = cv.cylinder(P(rx, ry, 0), R(6, 4), z_range=((u(-0.4, 0.2) * z_half) * s, big))
        cv.paint(w, c, u(400, 900))
    # liver with vessels and tumours (confined to the abdominal cavity)
    lc = P(u(-75, -55), u(-15, 5), 25 + u(-10, 10))
    lr = R(u(80, 95), u(70, 85), u(70, 85))
    liver_hu = u(90, 130)
    lw, lcov = cv.ellipsoid(lc, lr, yaw=u(-0.3, 0.3), deform=(rng, 8 * s, 40 * s))
    # cut the left lobe with a plane so the liver tapers across the midline
    x, _, _ = cv.grid(lw)
    lcov = lcov * np.clip(0.5 - (x - (lc[0] + lr[0] * u(0.55, 0.8))) / cv.edge, 0, 1) * cavity[lw]
    tex = liver_hu + 6 * smooth_field(rng, lcov.shape, [4 / v for v in cv.spacing])
    cv.paint(lw, lcov, tex, label=1)
    liver_mask = lcov > 0.5
    for _ in range(int(rng.integers(4, 9))):  # vessels: elongated bright tubes (labelled liver)
        vc = (lc[0] + lr[0] * u(-0.5, 0.5), lc[1] + lr[1] * u(-0.5, 0.5), lc[2] + lr[2] * u(-0.5, 0.5))
        r = u(2.5, 6) * s
        w, c = cv.ellipsoid(vc, (r, r * u(3, 8), r * u(1, 4)), yaw=u(0, math.pi))
        if w is not None:
            cv.paint(w, c * _in(liver_mask, lw, w), u(150, 200))
    for _ in range(int(rng.integers(1, 5))):  # tumours: hypodense, irregular, inside the liver
        r = u(10, 35) * s
        tc = (lc[0] + lr[0] * u(-0.45, 0.35), lc[1] + lr[1] * u(-0.45, 0.45), lc[2] + lr[2] * u(-0.45, 0.45))
        w, c = cv.ellipsoid(tc, (r, r * u(0.7, 1.0), r * u(0.7, 1.1)), yaw=u(0, math.pi),
                            deform=(rng, 0.15 * r, max(r / 2, 3.0)))
        if w is None:
            continue
        c = c * _in(liver_mask, lw, w)
        cv.paint(w, c, liver_hu - u(30, 70) + 8 * smooth_field(rng, c.shape, [3 / v for v in cv.spacing]), label=2)
    # gallbladder: water-dense, under the liver, unlabelled (overrides the liver label)
    gc = (lc[0] + lr[0] * 0.5, lc[1] - lr[1] * 0.55, lc[2] - lr[2] * 0.3)
    w, c = cv.ellipsoid(gc, R(14, 20, 28), yaw=u(-0.5, 0.5))
    cv.paint(w, c, u(0, 25), label=0)

    # structures behind and beside the liver, painted over it (and clearing its label)
    # spine: vertebral body with discs, canal, posterior elements
    period = u(28, 34)
    phase = u(0, period)
    for k in range(-8, 9):
        zv = zc + phase + k * period
        if abs(zv - zc) > z_half + period:
            continue
        w, c = cv.ellipsoid(P(0, vy, zv), R(24, 21, period * 0.42))
        cv.paint(w, c, u(700, 1000), label=0)
        w, c = cv.ellipsoid(P(0, vy, zv), R(21, 18, period * 0.36), win=w)
        cv.paint(w, c, u(200, 320), label=0)
        w, c = cv.ellipsoid(P(0, vy + 35, zv), R(26, 14, period * 0.35))
        cv.paint(w, c, u(450, 800), label=0)
        w, c = cv.ellipsoid(P(0, vy + 24, zv), R(9, 9, period * 0.5))
        cv.paint(w, c, u(0, 20), label=0)
    # paraspinal and psoas muscles
    for side in (-1, 1):
        w, c = cv.cylinder(P(side * 42, vy + 38, zc), R(28, 20), deform=(rng, 3 * s, 30 * s))
        cv.paint(w, c, u(40, 60), label=0)
        w, c = cv.cylinder(P(side * 38, vy - 5, zc), R(17, 20), z_range=(-big, u(-0.3, 0.3) * z_half * s))
        cv.paint(w, c, u(40, 60), label=0)
    # great vessels
    aorta, ivc = u(150, 220), u(110, 160)
    w, c = cv.cylinder(P(u(5, 15), vy - 30, zc), R(11, 11))
    cv.paint(w, c, aorta, label=0)
    w, c = cv.cylinder(P(u(-30, -20), vy - 28, zc), R(13, 10))
    cv.paint(w, c, ivc, label=0)
    # texture, noise (correlated over ~1 voxel), reconstruction circle
    img = cv.image
    noise = rng.standard_normal(img.shape, dtype=np.float32)
    noise = (noise + np.roll(noise, 1, axis=0) + np.roll(noise, 1, axis=1)) / np.float32(math.sqrt(3))
    img += u(8, 20) * noise
    ii = (np.arange(n) - n / 2 + 0.5)[:, None]
    outside = (ii ** 2 + ii.T ** 2) > (n / 2) ** 2
    img[outside] = -1024
    np.clip(img, -1024, 3071, out=img)
    return np.rint(img).astype(np.int16), cv.label, cv.spacing


def _in(mask: np.ndarray, mask_win, win) -> np.ndarray:
    """``mask`` (defined on ``mask_win``) restricted to the window ``win``, as float32 (0 outside)."""
    out = np.zeros(tuple(s.stop - s.start for s in win), dtype=np.float32)
    lo = [max(a.start, b.start) for a, b in zip(mask_win, win)]
    hi = [min(a.stop, b.stop) for a, b in zip(mask_win, win)]
    if any(lo_ >= hi_ for lo_, hi_ in zip(lo, hi)):
        return out
    src = tuple(slice(l - a.start, h - a.start) for l, h, a in zip(lo, hi, mask_win))
    dst = tuple(slice(l - b.start, h - b.start) for l, h, b in zip(lo, hi, win))
    out[dst] = mask[src]
    return out

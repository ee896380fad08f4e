"""Prostate MR phantom with two channels (T2-weighted, ADC), labels 1 PZ and 2 TZ.

The anatomy model
=================
A small field of view (0.55-0.7 mm pixels, 3-4 mm slices) centred on the prostate, in a
pelvis frame (x left-right, y front(-)-back(+), z feet(-)-head(+), origin at the gland):

* the gland: a lumpy ellipsoid (~40-55 mm wide) with a dark capsule. The transition
  zone (TZ, label 2) is a second ellipsoid shifted forwards and upwards inside it (bigger
  in older, hyperplastic glands), so the peripheral zone (PZ, label 1, the rest of the
  gland) is a thick posterior crescent that dominates the apex (lowest slices) while the
  TZ dominates the base. The anterior fibromuscular stroma (dark) is counted in the TZ,
  as in Task05 ("central gland"). Hyperplastic nodules texture the TZ; the urethra runs
  through it. Sometimes a dark-on-T2, low-ADC lesion sits in the PZ (no label of its own:
  the labels are zones);
* around it: periprostatic fat and bright venous plexus, the rectum behind (dark wall,
  gas or mucus inside), the bladder above (bright urine, dark wall), the seminal vesicles
  above and behind, obturator internus and levator ani muscles, the pubic bones in front.

Channel 0 is T2-weighted (fat and fluid bright, muscle dark, PZ brighter than TZ) with a
smooth bias field that can be strongly brighter near the rectum (endorectal coil) and
Rician noise. Channel 1 is an ADC map in 1e-6 mm^2/s (urine ~2900, PZ ~1600, TZ ~1250,
lesion ~800, fat suppressed low), blurred to lower resolution, slightly misregistered
against the T2 image and noisier. Labels follow the T2 image.
"""

from __future__ import annotations

import math

import numpy as np
from scipy import ndimage

from medssl_utils.data.phantoms.common import Canvas, NoisePool, rician, smooth_field

DOMAIN_CODE = 4
LABELS = {"0": "background", "1": "PZ", "2": "TZ"}
MODALITY = {"0": "T2", "1": "ADC"}


def make_case(rng: np.random.Generator):
    """One prostate case: ``(image int16 (X, Y, Z, 2), label uint8 (X, Y, Z), spacing mm)``."""
    u = rng.uniform
    n = int(rng.integers(160, 225))
    sp = u(0.55, 0.7)
    sz = u(3.0, 4.0)
    nz = int(rng.integers(14, 23))
    shape = (n, n, nz)
    centre = (n * sp / 2 + u(-10, 10), n * sp / 2 + u(-10, 10), nz * sz / 2 + u(-6, 6))
    angle = u(-0.12, 0.12)
    t2 = Canvas(shape, (sp, sp, sz), centre, angle=angle, fill=u(0.65, 0.8))
    adc = Canvas(shape, (sp, sp, sz), centre, angle=angle, fill=u(150, 350))

    def paint(win, cover, v_t2, v_adc, label=None):
        t2.paint(win, cover, v_t2, label=label)
        adc.paint(win, cover, v_adc)

    def ell(c, r, **kw):
        return t2.ellipsoid(c, r, **kw)

    muscle_t2, muscle_adc = u(0.18, 0.28), u(1300, 1500)
    # obturator internus, levator ani sling (lower slices), pubic bones in front
    for side in (-1, 1):
        w, c = t2.cylinder((side * u(55, 65), u(-5, 10)), (u(10, 15), 38), yaw=side * 0.2,
                           deform=(rng, 2.0, 15.0))
        paint(w, c, muscle_t2, muscle_adc)
        w, c = ell((side * 40, u(-45, -38), -15), (14, 12, 25))
        paint(w, c, u(0.05, 0.1), 300)  # cortical bone
        w, c = ell((side * 40, u(-45, -38), -15), (11, 9, 22), win=w)
        paint(w, c, u(0.45, 0.6), u(350, 550))  # marrow
        w, c = ell((side * u(85, 95), u(0, 15), 10), (25, 25, 25))
        paint(w, c, u(0.4, 0.55), u(350, 550))  # femoral heads, mostly outside the field of view
    w, c = ell((0, 12, -20), (36, 34, 18))
    _, c2 = ell((0, 12, -20), (30, 28, 20), win=w)
    _, yw, _ = t2.grid(w)
    paint(w, np.clip(c - c2, 0, 1) * (yw > 0), muscle_t2, muscle_adc)  # a U-shaped sling behind
    # rectum behind the gland
    a_p = u(18, 24)  # gland half-width (x)
    b_p = u(13, 18)  # half-depth (y)
    c_p = u(16, 24)  # half-height (z)
    ry = b_p + u(8, 14)
    w, c = t2.cylinder((0, ry), (u(13, 17), u(10, 13)), deform=(rng, 1.5, 10.0))
    paint(w, c, u(0.25, 0.35), u(1100, 1400))
    w, c = t2.cylinder((0, ry), (u(7, 10), u(4, 7)), deform=(rng, 1.0, 8.0))
    gas = u() < 0.5
    paint(w, c, 0.02 if gas else u(0.6, 0.8), 50 if gas else u(1800, 2400))
    # bladder above, seminal vesicles above-behind
    bc = (u(-4, 4), u(-12, -4), c_p + u(15, 25))
    w, c = ell(bc, (u(30, 40), u(25, 32), u(20, 28)), deform=(rng, 3.0, 20.0))
    paint(w, c, u(0.2, 0.3), 1400)
    w, c = ell(bc, (u(27, 36), u(22, 29), u(17, 25)), deform=(rng, 2.0, 20.0))
    paint(w, c, u(0.95, 1.05), u(2700, 3000))
    for side in (-1, 1):
        w, c = ell((side * u(12, 18), b_p * 0.6 + u(2, 6), c_p + u(3, 8)), (u(15, 22), u(5, 7), u(6, 9)),
                   yaw=side * u(0.3, 0.6), deform=(rng, 1.5, 5.0))
        paint(w, c, u(0.75, 0.9), u(1600, 2000))
    # venous plexus: bright spots hugging the gland anterolaterally
    for _ in range(int(rng.integers(4, 9))):
        ang = u(-math.pi * 0.95, -math.pi * 0.05)
        w, c = ell(((a_p + 2) * math.cos(ang), (b_p + 2) * math.sin(ang), u(-c_p, c_p)),
                   (u(1.5, 3), u(1.5, 3), u(4, 8)))
        paint(w, c, u(0.85, 1.0), u(1800, 2300))

    # the gland: capsule, PZ, TZ (with stroma, nodules, urethra), optional PZ lesion
    gw, cap = ell((0, 0, 0), (a_p + 1.2, b_p + 1.2, c_p + 1.2), deform=(rng, 1.0, 12.0))
    paint(gw, cap, u(0.15, 0.25), 1200)
    _, gland = ell((0, 0, 0), (a_p, b_p, c_p), win=gw)
    pz_tex = 1 + 0.08 * smooth_field(rng, gland.shape, [2.0 / s for s in t2.spacing])
    paint(gw, gland, u(0.7, 0.9) * pz_tex, u(1500, 1800), label=1)
    tzf = u(0.5, 0.85)
    tz_c = (u(-1.5, 1.5), -b_p * u(0.15, 0.35), c_p * u(0.15, 0.35))
    _, tz = ell(tz_c, (a_p * tzf, b_p * tzf * 1.1, c_p * tzf * 1.1), win=gw, deform=(rng, 0.8, 8.0))
    x, y, _ = t2.grid(gw)
    stroma = gland * np.clip(0.5 - (y + 0.65 * b_p) / t2.edge, 0, 1)  # anterior fibromuscular stroma
    tz = np.maximum(tz * gland, stroma)
    tz_t2, tz_adc = u(0.35, 0.5), u(1100, 1400)
    paint(gw, tz, tz_t2 * (1 + 0.12 * smooth_field(rng, tz.shape, [3.0 / s for s in t2.spacing])), tz_adc, label=2)
    paint(gw, stroma, u(0.15, 0.25), u(900, 1100))
    for _ in range(int(rng.integers(2, 7))):  # hyperplastic nodules inside the TZ
        r = u(2, 6) * tzf
        nc = (tz_c[0] + u(-0.5, 0.5) * a_p * tzf, tz_c[1] + u(-0.4, 0.4) * b_p * tzf,
              tz_c[2] + u(-0.5, 0.5) * c_p * tzf)
        w, c = ell(nc, (r, r, r * 1.3))
        if w is not None:
            paint(w, c * (t2.label[w] == 2), u(0.25, 0.6), u(1000, 1500))
    w, c = ell((tz_c[0], tz_c[1] * 0.6, 0), (1.5, 1.5, c_p), yaw=0.0)
    paint(w, c * (t2.label[w] > 0), u(0.5, 0.7), 1600)  # urethra (stays labelled)
    if u() < 0.4:  # PZ lesion: dark T2, low ADC, labelled as the zone it sits in
        ang = u(math.pi * 0.2, math.pi * 0.8)
        lc = (0.75 * a_p * math.cos(ang), 0.75 * b_p * math.sin(ang), u(-0.4, 0.3) * c_p)
        r = u(3, 7)
        w, c = ell(lc, (r, r * 0.8, r), deform=(rng, 0.8, 3.0))
        if w is not None:
            paint(w, c * (t2.label[w] > 0), u(0.25, 0.35), u(700, 950))

    # T2: texture, bias (optionally an endorectal-coil hot spot), Rician noise
    img = t2.image
    img *= 1 + 0.06 * smooth_field(rng, shape, [3.0 / s for s in t2.spacing])
    xg, yg, _ = t2.grid(t2.full())
    coil = u(0.0, 1.2) if u() < 0.5 else 0.0
    bias = (1 + 0.15 * smooth_field(rng, shape, [60.0 / s for s in t2.spacing])
            + coil * np.exp(-np.hypot(xg, yg - ry) / 35.0))
    scale = u(400, 1000)
    t2_img = rician(NoisePool(rng, img.size, spare=0.1), img * bias * scale, np.float32(scale * u(0.015, 0.035)))
    # ADC: lower resolution, small misregistration, Gaussian noise
    a = ndimage.gaussian_filter(adc.image, (1.3 / sp, 1.3 / sp, 0.0))
    shift = rng.integers(-3, 4, size=2)
    a = np.roll(a, tuple(int(s) for s in shift), axis=(0, 1))
    a += u(60, 140) * rng.standard_normal(a.shape, dtype=np.float32)
    image = np.stack([np.clip(t2_img, 0, 32767), np.clip(a, 0, 32767)], axis=-1)
    return np.rint(image).astype(np.int16), t2.label, t2.spacing

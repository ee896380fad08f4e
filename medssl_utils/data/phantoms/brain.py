"""Brain MR phantom (single FLAIR-like channel), labels 1 oedema and 2 tumour core.

The anatomy model
=================
An axial slab (70-90 mm; 1-1.25 mm pixels, 1.5-2 mm slices) through a head built from
nested ellipsoids in a head frame (x left-right, y front(-)-back(+), z feet-head):

* scalp (fat, bright on FLAIR), skull (dark cortical bone with a slightly brighter
  diploe), a thin dark CSF space, then the brain;
* cortex: grey matter (slightly brighter than white matter on FLAIR) whose inner border
  is pushed in and out by a smooth random field, so the grey/white boundary folds like
  gyri; sulci are dark CSF clefts where a second field peaks near the brain surface; a
  dark interhemispheric fissure splits the hemispheres;
* deep grey nuclei (caudate heads, thalami, putamina) and dark CSF-filled lateral
  ventricles and third ventricle, with a faint bright periventricular rim (as FLAIR shows);
* one tumour: a lumpy hyperintense oedema region (18-35 mm), confined to brain tissue,
  around a heterogeneous core (40-70% of its size, sometimes with a darker necrotic
  centre). Labels: 1 oedema (outside the core), 2 tumour core (necrosis included).
  A few small bright white-matter spots stay unlabelled (look-alikes).

Appearance: tissue texture, a smooth multiplicative bias field, Rician noise; the
intensity scale is arbitrary and varies per case (int16).
"""

from __future__ import annotations

import math

import numpy as np

from medssl_utils.data.phantoms.common import Canvas, NoisePool, ellipsoid_sdf, rician, smooth_field, soft_inside

DOMAIN_CODE = 3
LABELS = {"0": "background", "1": "oedema", "2": "tumour core"}


def make_case(rng: np.random.Generator):
    """One brain MR case: ``(image int16 (X, Y, Z), label uint8, spacing mm)``."""
    u = rng.uniform
    sp = u(1.0, 1.25)
    sz = u(1.5, 2.0)
    k = u(0.9, 1.05)  # head size
    nx = int(round(u(158, 168) * k / sp))
    ny = int(round(u(192, 204) * k / sp))
    nz = int(round(u(70, 90) / sz))
    slab_centre = u(-5, 15)  # head-frame z at the slab's middle
    cv = Canvas((nx, ny, nz), (sp, sp, sz), (nx * sp / 2 + u(-4, 4), ny * sp / 2 + u(-4, 4), nz * sz / 2 - slab_centre),
                angle=u(-0.15, 0.15), fill=0.0)
    A, B, C = 70 * k, 88 * k, 80 * k  # outer scalp semi-axes
    full = cv.full()
    v = dict(fat=u(0.6, 0.8), bone=u(0.03, 0.08), diploe=u(0.15, 0.25), csf=u(0.05, 0.1),
             gm=u(0.5, 0.58), wm=u(0.4, 0.47), oedema=u(0.8, 0.95), core=u(0.55, 0.75))
    x, y, z = cv.grid(full)
    vox = [1.0 / s for s in cv.spacing]
    # one signed distance for the head; every layer is an offset of it
    sd = ellipsoid_sdf(x, y, z, (A, B, C)) + 1.5 * smooth_field(rng, cv.shape, [30 * f for f in vox])
    skin, skull = u(4, 7), u(5, 8)
    d_brain = skin + skull + u(1.5, 3.0)
    for depth, value in ((0, v["fat"]), (skin, v["bone"]), (skin + 0.3 * skull, v["diploe"]),
                         (skin + 0.7 * skull, v["bone"]), (skin + skull, v["csf"])):
        cv.paint(full, soft_inside(sd + depth, cv.edge), value)
    sd += d_brain + smooth_field(rng, cv.shape, [15 * f for f in vox])  # now: distance to the brain surface
    brain = soft_inside(sd, cv.edge)
    cv.paint(full, brain, v["gm"])
    # white matter: folded inner border of the cortex
    cortex = u(2.5, 3.5)
    gyri = smooth_field(rng, cv.shape, [6 * f for f in vox])
    cv.paint(full, soft_inside(sd + cortex + 3.0 * (1 + gyri), cv.edge), v["wm"])
    # sulci: dark clefts near the surface
    sulci = smooth_field(rng, cv.shape, [5 * f for f in vox])
    cv.paint(full, (np.abs(sulci) < 0.12) * (sd > -(cortex + 5.0)) * brain, v["csf"])
    # interhemispheric fissure
    w, c = cv.ellipsoid((0, 0, 8 * k), (1.2, B - d_brain, C - d_brain))
    if w is not None:
        cv.paint(w, c * (sd[w] > -35), v["csf"])
    # deep grey nuclei
    for sx_ in (-1, 1):
        for centre, radii in (((14, -12, 8), (6, 9, 9)), ((10, 8, 0), (9, 13, 9)), ((24, -2, 2), (5, 13, 9))):
            w, c = cv.ellipsoid((sx_ * centre[0] * k, centre[1] * k, centre[2] * k), [r * k for r in radii],
                                yaw=sx_ * 0.15)
            cv.paint(w, c, v["gm"] * u(0.92, 1.0))
    # ventricles with a bright periventricular rim
    vent = [((0, 4 * k, -2 * k), (1.8, 12 * k, 9 * k), 0.0)]
    for sx_ in (-1, 1):
        vent.append(((sx_ * 8 * k, -2 * k, 10 * k), (u(4, 7), 27 * k, 9 * k), sx_ * 0.15))
        vent.append(((sx_ * 13 * k, 26 * k, 6 * k), (4, 12 * k, 7 * k), sx_ * 0.5))
    for centre, radii, yaw in vent:
        w, c = cv.ellipsoid(centre, [r + 2 for r in radii], yaw=yaw)
        cv.paint(w, c, v["wm"] * 1.25)
    for centre, radii, yaw in vent:
        w, c = cv.ellipsoid(centre, radii, yaw=yaw)
        cv.paint(w, c, v["csf"])
    tissue = (cv.image > 0.3).astype(np.float32) * brain  # parenchyma (not CSF)

    # small unlabelled bright white-matter spots
    for _ in range(int(rng.integers(0, 6))):
        c0 = (u(-45, 45) * k, u(-50, 50) * k, u(-10, 40) * k)
        w, c = cv.ellipsoid(c0, [u(1.5, 3.5)] * 3)
        if w is not None:
            cv.paint(w, c * tissue[w], v["oedema"] * u(0.85, 1.0))
    # the tumour: oedema around a heterogeneous core
    r_o = u(18, 35)
    centre = (u(-0.5, 0.5) * (A - d_brain - r_o * 0.5), u(-0.5, 0.5) * (B - d_brain - r_o * 0.5),
              slab_centre + u(-0.2, 0.2) * nz * sz)
    w, c = cv.ellipsoid(centre, (r_o, r_o * u(0.7, 1.0), r_o * u(0.7, 1.0)), yaw=u(0, math.pi),
                        deform=(rng, 0.25 * r_o, 0.4 * r_o))
    if w is not None:
        c = c * tissue[w]
        cv.paint(w, c, v["oedema"] * (1 + 0.06 * smooth_field(rng, c.shape, [3 / s for s in cv.spacing])), label=1)
        r_c = r_o * u(0.4, 0.7)
        wc, cc = cv.ellipsoid(centre, (r_c, r_c * u(0.75, 1.0), r_c * u(0.75, 1.0)), yaw=u(0, math.pi),
                              deform=(rng, 0.2 * r_c, 0.5 * r_c))
        if wc is not None:
            cc = cc * tissue[wc]
            tex = v["core"] * (1 + 0.15 * smooth_field(rng, cc.shape, [2.5 / s for s in cv.spacing]))
            cv.paint(wc, cc, tex, label=2)
            if u() < 0.6:  # necrotic centre: darker, still tumour core
                wn, cn = cv.ellipsoid(centre, [r_c * u(0.3, 0.5)] * 3, deform=(rng, 0.1 * r_c, 0.5 * r_c))
                if wn is not None:
                    cv.paint(wn, cn * tissue[wn], v["core"] * u(0.4, 0.6))

    img = cv.image
    img *= 1 + 0.04 * smooth_field(rng, img.shape, [2.0 / s for s in cv.spacing])
    bias = 1 + 0.2 * smooth_field(rng, img.shape, [80.0 / s for s in cv.spacing])
    scale = u(300, 900)
    img = rician(NoisePool(rng, img.size, spare=0.1), img * bias * scale, np.float32(scale * u(0.015, 0.035)))
    return np.rint(np.clip(img, 0, 32767)).astype(np.int16), cv.label, cv.spacing

"""Cardiac cine-MR phantom in the ACDC layout (short-axis stacks, ED/ES labels, 4D cine).

The anatomy model
=================
Each patient is a stack of ``nz`` short-axis slices (6-10, thickness 5-10 mm) through a
left ventricle (LV) modelled as two nested half-ellipsoids around a long axis whose
**apex stays fixed** while the **base descends** during systole (longitudinal shortening
``ls``). A slice at height ``h`` above the epicardial apex sees, at cine phase ``phi``
(0 = end-diastole, 1 = end-systole):

* base height ``b = L * (1 - ls * phi)`` and normalised depth below the base
  ``u = (b - h) / b`` (0 at the base, 1 at the apex; ``u < 0`` is above the valve plane);
* the epicardial profile ``p_epi = sqrt(1 - u**q)`` and the endocardial profile
  ``p_endo`` (same shape, ending ``t_apex`` mm above the apex, so apical slices show a cap
  of myocardium with no cavity);
* the endocardial radius ``r_endo(theta) = r0 * p_endo * F(theta) * (1 - (1 - k) * phi * K(theta))``
  where ``F`` is a smooth angular shape (ellipticity and a 3-lobed term), ``k`` the radial
  contraction reached at end-systole (chosen from the group's ejection fraction) and ``K``
  is 1 except in an infarcted (akinetic) sector where it falls to ~0;
* the epicardial radius from **myocardial area conservation** along every ray:
  ``r_epi**2 = r_endo**2 + A(theta)``, ``A`` being the ring area (per radian) at ED scaled
  by ``1 / (1 - ls * phi)``; so the wall thickens as the cavity shrinks.

The right ventricle (RV) is an ellipse placed on the septal side of the LV (direction
``alpha``) whose inner edge lies inside the LV epicardium: the part outside the LV is the
RV cavity, a crescent that wraps the septum (the septum itself is LV myocardium, as in ACDC).
Its thickness ``w_rv`` shrinks with the RV ejection fraction and tapers to nothing at
``zeta_rv`` of the way from base to apex. A thin, unlabelled RV free wall surrounds it.
Papillary muscles (two dark discs) and trabeculations (dark streaks along the
endocardium) sit inside the LV cavity and are **labelled LV cavity**, as ACDC does.
Above the valve plane the atria and aortic root appear as bright, unlabelled blood pools.

Groups (assigned round-robin in ACDC's order DCM, HCM, MINF, NOR, RV) change the
parameters: NOR normal size and EF ~0.55-0.68; DCM dilated thin-walled LV with EF < 0.3;
HCM thick (septum-dominant) myocardium, small cavity, EF > 0.7; MINF a thinned akinetic
sector and EF ~0.25-0.42; RV a dilated, poorly contracting RV.

The appearance model (balanced-SSFP-like)
=========================================
Bright blood, dark myocardium, and a static torso around the heart: body outline with
bright subcutaneous fat, chest-wall muscle and liver (both about as dark as myocardium),
dark lungs with bright vessels, bright pericardial fat pads, descending aorta and stomach,
spine. Every tissue carries a smooth multiplicative texture. The heart's image is the
average of two sub-slices at -/+ a quarter of the slice thickness (through-plane partial
volume, which blurs the base and apex), while its labels come from the slice centre. A smooth
coil bias field multiplies the image and Rician noise is added per frame. Pose (rotation,
translation, storage transposition), field of view, matrix (128-192 per axis, not
necessarily square) and in-plane spacing (1.3-1.9 mm) vary per patient; slices also get
small breath-hold misregistration shifts.

Everything static (torso, textures, bias, per-pixel angular maps) is computed once per
patient; only the heart layer is re-rendered for each cine frame, on a crop around it.
"""

from __future__ import annotations

import math
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from medssl_utils.data.nifti import write_nifti
from medssl_utils.data.phantoms.common import NoisePool, case_rng, ellipse_sdf, rician, smooth_field, soft_inside

GROUPS = ("DCM", "HCM", "MINF", "NOR", "RV")
DOMAIN_CODE = 1


@dataclass
class CardiacCase:
    """All random parameters of one synthetic patient (lengths in mm, angles in radians)."""

    number: int  # patient number (1.. training, 101.. testing)
    group: str
    nb_frame: int
    ed: int  # 1-based frame numbers, as in Info.cfg
    es: int
    height_cm: float
    weight_kg: float
    matrix: tuple[int, int]  # (nx, ny) in-plane pixels
    spacing: tuple[float, float, float]  # (sx, sy, sz) mm
    nz: int
    transpose: bool  # store with X and Y swapped (scanner storage order varies in ACDC)
    angle: float  # in-plane rotation of the whole scene
    body_centre: tuple[float, float]  # scene origin in pixel-mm coordinates
    slice_jitter: np.ndarray  # (nz, 2) breath-hold misregistration per slice, mm
    slice_h: np.ndarray  # (nz,) height of each slice centre above the LV apex, mm
    heart_xy: np.ndarray  # (nz, 2) LV centre per slice in the body frame, mm (long-axis tilt)
    lv: dict = field(default_factory=dict)
    rv: dict = field(default_factory=dict)
    tissue: dict = field(default_factory=dict)  # intensities, arbitrary MR units
    noise_sigma: float = 20.0

    @property
    def es_index(self) -> int:
        return self.es - 1

    @property
    def ed_index(self) -> int:
        return self.ed - 1


# ----------------------------------------------------------------------------------------
# sampling the patient
# ----------------------------------------------------------------------------------------

def _group_lv_rv(group: str, rng: np.random.Generator) -> tuple[dict, dict]:
    """LV and RV parameters for one patient of ``group`` (see module docstring).

    LV keys: ``r0`` endocardial radius at the widest level at ED (mm); ``wall`` wall
    thickness at ED (mm); ``ef`` target ejection fraction; ``ls`` longitudinal shortening
    (fraction of ``L`` the base descends by ES); ``L`` epicardial base-apex length (mm);
    ``septal`` extra septal thickness (fraction, HCM); ``sector`` the MINF infarct (centre
    angle from the septum, half width in rad, thinning fraction, depth range) or None;
    ``t_apex`` apical wall (mm); ``q`` profile exponent; ``k`` radial endocardial
    contraction reached at ES; ``ellip``/``lobe3`` (+ ``_dir``) shape harmonics;
    ``pm_offsets``/``pm_radius`` papillary muscles; ``trab_angles``/``trab_amp`` trabeculae.

    RV keys: ``w`` crescent thickness at the base at ED (mm); ``ef`` RV ejection fraction;
    ``beta`` half-extent across the septum relative to the LV radius (how far it wraps);
    ``gamma`` how deep its inner edge lies inside the LV (fraction of the LV radius);
    ``zeta`` fraction of the base-apex length it reaches; ``wall`` free-wall thickness
    (mm); ``k`` thickness contraction at ES; ``alpha`` (set by :func:`sample_case`) its
    direction from the LV centre.
    """
    n = rng.normal
    u = rng.uniform
    lv = dict(r0=n(24.0, 1.8), wall=n(8.5, 0.8), ef=u(0.55, 0.68), ls=u(0.10, 0.16),
              L=n(86.0, 6.0), septal=u(0.0, 0.12), sector=None)
    rv = dict(w=n(19.0, 3.0), ef=u(0.45, 0.60), beta=u(1.05, 1.3), gamma=u(0.15, 0.4),
              zeta=u(0.7, 0.85), wall=u(2.5, 4.0))
    if group == "DCM":
        lv.update(r0=n(32.0, 2.5), wall=n(6.3, 0.6), ef=u(0.08, 0.25), ls=u(0.03, 0.07), L=n(96.0, 6.0))
        rv.update(ef=u(0.30, 0.50))
    elif group == "HCM":
        lv.update(r0=n(19.5, 1.8), wall=n(15.0, 1.8), ef=u(0.70, 0.82), ls=u(0.06, 0.12),
                  L=n(82.0, 5.0), septal=u(0.2, 0.5))
    elif group == "MINF":
        lv.update(r0=n(28.0, 2.2), ef=u(0.25, 0.42), ls=u(0.04, 0.09), L=n(90.0, 6.0),
                  sector=dict(centre=u(-math.pi, math.pi), half_width=u(0.6, 1.1),
                              thin=u(0.35, 0.55), h_lo=u(0.0, 0.4), h_hi=u(0.7, 1.0)))
        rv.update(ef=u(0.35, 0.55))
    elif group == "RV":
        lv.update(r0=n(22.5, 1.8), ef=u(0.50, 0.65))
        rv.update(w=n(33.0, 4.0), ef=u(0.18, 0.38), beta=u(1.25, 1.55), zeta=u(0.85, 0.95))
    lv["r0"] = float(np.clip(lv["r0"], 14.0, 42.0))
    lv["wall"] = float(np.clip(lv["wall"], 4.5, 22.0))
    lv["t_apex"] = 0.8 * lv["wall"]
    lv["q"] = u(1.8, 2.6)
    # radial contraction k: cavity volume ratio ~ k^2 * (1 - ls) = 1 - EF
    lv["k"] = float(np.sqrt(min(1.0, (1.0 - lv["ef"]) / (1.0 - lv["ls"]))))
    rv["k"] = float(min(1.0, (1.0 - rv["ef"]) / (1.0 - lv["ls"])))
    rv["w"] = float(max(rv["w"], 8.0))
    lv["ellip"], lv["ellip_dir"] = u(0.02, 0.09), u(-math.pi, math.pi)
    lv["lobe3"], lv["lobe3_dir"] = u(0.0, 0.035), u(-math.pi, math.pi)
    lv["pm_offsets"] = (u(0.7, 1.1), -u(0.7, 1.1))  # papillary muscles, from the free-wall direction
    lv["pm_radius"] = u(2.8, 4.5) * (1.35 if group == "HCM" else 1.0)
    lv["trab_angles"] = u(-math.pi, math.pi, size=int(rng.integers(6, 14)))
    lv["trab_amp"] = u(0.3, 1.0, size=lv["trab_angles"].size)
    return lv, rv


def sample_case(number: int, group: str, seed: int) -> tuple[CardiacCase, np.random.Generator]:
    """Draw every parameter of patient ``number``; returns the case and its generator.

    The same generator is then used to draw the textures and noise, so a patient depends
    only on (seed, number).
    """
    rng = case_rng(seed, DOMAIN_CODE, number)
    lv, rv = _group_lv_rv(group, rng)
    nb_frame = int(rng.integers(12, 17))
    ed = 1 if rng.uniform() < 0.9 else 2
    es = ed + int(round(nb_frame * rng.uniform(0.35, 0.45)))
    sex_male = rng.uniform() < 0.6
    height = rng.normal(176.0 if sex_male else 163.0, 7.0)
    weight = rng.normal(82.0 if sex_male else 68.0, 12.0) * (1.1 if group in ("DCM", "HCM") else 1.0)

    # matrix 128-192 per axis (not necessarily square), field of view ~250-340 mm
    nx = int(rng.integers(128, 193))
    ny = int(np.clip(round(nx * rng.uniform(0.8, 1.2)), 128, 192))
    sx = float(np.clip(rng.uniform(250.0, 340.0) / nx, 1.3, 1.9))
    sy = sx if rng.uniform() < 0.8 else float(np.clip(sx * rng.uniform(0.95, 1.05), 1.3, 1.9))
    # 6-10 slices of 5-10 mm that cover the ventricle from base to apex
    extent = lv["L"] * rng.uniform(1.0, 1.15)
    nz = int(np.clip(math.ceil(extent / rng.uniform(6.5, 10.0)), 6, 10))
    sz = float(np.clip(extent / nz, 5.0, 10.0))
    base_offset = rng.uniform(-0.35, 0.25) * sz  # slice 0 centre relative to the ED base
    slice_h = lv["L"] + base_offset - sz * np.arange(nz)

    angle = rng.uniform(-math.pi / 4, math.pi / 4)
    # heart (scene origin) placed off-centre in the field of view
    cx = nx * sx * rng.uniform(0.38, 0.62)
    cy = ny * sy * rng.uniform(0.38, 0.62)
    jitter = rng.normal(0.0, 1.2, size=(nz, 2))
    tilt = rng.normal(0.0, 0.12, size=2)  # mm of in-plane drift per mm along the long axis
    heart_xy = (slice_h - lv["L"] / 2)[:, None] * tilt[None, :]

    blood = rng.uniform(600.0, 1200.0)
    myo = blood * rng.uniform(0.2, 0.34)
    tissue = dict(
        blood=blood, rv_blood=blood * rng.uniform(0.85, 1.0), myo=myo,
        muscle=myo * rng.uniform(0.9, 1.25), liver=myo * rng.uniform(1.05, 1.5),
        fat=blood * rng.uniform(0.65, 1.0), lung=blood * rng.uniform(0.03, 0.08),
        aorta=blood * rng.uniform(0.7, 1.0), stomach=blood * rng.uniform(0.3, 0.7),
        marrow=myo * rng.uniform(1.1, 1.6), csf=blood * rng.uniform(0.6, 0.9),
        mediastinum=blood * rng.uniform(0.35, 0.7),
        texture=rng.uniform(0.08, 0.16),
    )
    case = CardiacCase(
        number=number, group=group, nb_frame=nb_frame, ed=ed, es=es,
        height_cm=float(round(height)), weight_kg=float(round(weight)),
        matrix=(nx, ny), spacing=(float(sx), float(sy), sz), nz=nz,
        transpose=bool(rng.uniform() < 0.25), angle=float(angle), body_centre=(cx, cy),
        slice_jitter=jitter, slice_h=slice_h, heart_xy=heart_xy, lv=lv, rv=rv, tissue=tissue,
        noise_sigma=blood * rng.uniform(0.025, 0.06),
    )
    # RV direction in the body frame: towards the patient's right and anterior (image left, up)
    case.rv["alpha"] = math.atan2(-0.35, -1.0) + rng.normal(0.0, 0.2)
    return case, rng


def cine_phase(nb_frame: int, ed_index: int, es_index: int) -> np.ndarray:
    """Contraction phase per frame, shape (nb_frame,): 0 at ED, 1 at ES, back to ~0 at the end.

    Systole follows a half cosine; diastole a faster relaxation (rapid filling) that reaches
    0 at 70% of the remaining frames, then rests (diastasis).
    """
    t = np.arange(nb_frame, dtype=float)
    phase = np.zeros(nb_frame)
    sys = (t >= ed_index) & (t <= es_index)
    phase[sys] = 0.5 * (1 - np.cos(np.pi * (t[sys] - ed_index) / max(es_index - ed_index, 1)))
    dia = t > es_index
    span = max(0.7 * (nb_frame - es_index), 1.0)
    phase[dia] = 0.5 * (1 + np.cos(np.pi * np.clip((t[dia] - es_index) / span, 0, 1)))
    return phase


# ----------------------------------------------------------------------------------------
# static scene
# ----------------------------------------------------------------------------------------

def body_coords(case: CardiacCase) -> tuple[np.ndarray, np.ndarray]:
    """Body-frame coordinates (mm) of every pixel, shape (nz, nx, ny) each."""
    nx, ny = case.matrix
    sx, sy, _ = case.spacing
    c, s = math.cos(case.angle), math.sin(case.angle)
    cx = (case.body_centre[0] + case.slice_jitter[:, 0])[:, None, None]
    cy = (case.body_centre[1] + case.slice_jitter[:, 1])[:, None, None]
    px = (np.arange(nx, dtype=np.float32) * sx)[None, :, None] - cx
    py = (np.arange(ny, dtype=np.float32) * sy)[None, None, :] - cy
    X = (c * px + s * py).astype(np.float32)
    Y = (-s * px + c * py).astype(np.float32)
    return X, Y


def _disc(X, Y, cx, cy, r, px):
    """Soft disc of radius ``r`` (mm) centred at (cx, cy) in the coordinates X, Y."""
    return soft_inside(np.hypot(X - cx, Y - cy) - r, px)


def _blend(img, value, alpha):
    """Composite ``value`` over ``img`` with coverage ``alpha`` (in place)."""
    img += (value - img) * alpha
    return img


def _window(case: CardiacCase, cx: float, cy: float, radius: float) -> tuple[slice, slice] | None:
    """Pixel window (over all slices) that contains the body-frame disc (cx, cy, radius)."""
    c, s = math.cos(case.angle), math.sin(case.angle)
    pxmm = c * cx - s * cy + case.body_centre[0] + case.slice_jitter[:, 0]
    pymm = s * cx + c * cy + case.body_centre[1] + case.slice_jitter[:, 1]
    (nx, ny), (sx, sy) = case.matrix, case.spacing[:2]
    i0 = max(int((pxmm.min() - radius) / sx) - 1, 0)
    i1 = min(int((pxmm.max() + radius) / sx) + 2, nx)
    j0 = max(int((pymm.min() - radius) / sy) - 1, 0)
    j1 = min(int((pymm.max() + radius) / sy) + 2, ny)
    if i0 >= i1 or j0 >= j1:
        return None
    return slice(i0, i1), slice(j0, j1)


def _blend_disc(img, X, Y, case: CardiacCase, cx, cy, r, value) -> None:
    """Composite a soft disc of ``value`` (body-frame centre/radius in mm) into ``img`` in place.

    Only the window around the disc is touched, which keeps many small discs cheap.
    """
    win = _window(case, cx, cy, r + 2.0)
    if win is None:
        return
    sel = (slice(None),) + win
    _blend(img[sel], value, _disc(X[sel], Y[sel], cx, cy, r, min(case.spacing[:2])))


def background(case: CardiacCase, X: np.ndarray, Y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Static torso around the heart, noise-free intensities, shape (nz, nx, ny) float32.

    Built in the body frame (origin at the LV centre of the mid slice; +x to the patient's
    left, +y posterior). The heart itself is drawn later, per frame, on top of this.
    """
    t = case.tissue
    px = min(case.spacing[:2])
    h = case.slice_h[:, None, None]
    depth = np.clip((case.lv["L"] - h) / case.lv["L"], -0.3, 1.3)  # 0 base .. 1 apex
    r = lambda lo, hi: rng.uniform(lo, hi)  # noqa: E731

    img = np.full(X.shape, t["lung"] * 0.3, dtype=np.float32)  # air outside the body (dark)
    # body outline: an ellipse with a bright subcutaneous fat layer and muscle inside
    bx, by, ba, bb = r(-35, -15), r(15, 35), r(150, 185), r(105, 130)
    body_sdf = ellipse_sdf(X - bx, Y - by, ba, bb)
    fat_thick = r(8, 22) * (1 + 0.3 * smooth_field(rng, X.shape, (1, 40 / px, 40 / px)))
    _blend(img, t["fat"], soft_inside(body_sdf, px))
    _blend(img, t["muscle"], soft_inside(body_sdf + fat_thick, px))
    # lungs either side of the mediastinum
    for lx, ly, la, lb in ((r(-100, -80), r(-10, 10), r(45, 60), r(65, 85)),
                           (r(80, 100), r(-5, 15), r(40, 55), r(60, 80))):
        _blend(img, t["lung"], soft_inside(ellipse_sdf(X - lx, Y - ly, la, lb), px))
    # mediastinum (pericardial fat and great vessels) around the heart
    R = case.lv["r0"] + case.lv["wall"]
    ax, ay = math.cos(case.rv["alpha"]), math.sin(case.rv["alpha"])
    mx, my = 0.35 * case.rv["w"] * ax, 0.35 * case.rv["w"] * ay
    _blend(img, t["mediastinum"],
           soft_inside(ellipse_sdf(X - mx, Y - my, R + case.rv["w"] + r(6, 14), R + r(8, 16)), px))
    # pericardial fat pads hugging the epicardium (bright like blood: a confounder)
    for _ in range(int(rng.integers(3, 7))):
        ang = r(-math.pi, math.pi)
        dist = R + r(0, 8)
        _blend_disc(img, X, Y, case, dist * math.cos(ang), dist * math.sin(ang), r(4, 9), t["fat"])
    # liver below the heart, rising into the apical slices
    lvy = r(95, 120) - 45 * depth
    _blend(img, t["liver"], soft_inside(ellipse_sdf(X - r(-60, -30), Y - lvy, r(90, 120), r(55, 75)), px))
    # stomach (fluid/air mix) at the apical level on the patient's left
    st = soft_inside(ellipse_sdf(X - r(55, 85), Y - (r(90, 110) - 30 * depth), r(30, 45), r(22, 32)), px)
    _blend(img, t["stomach"], st * (depth > 0.4))
    # descending aorta (bright, round, unlabelled), spine with marrow and CSF
    ax_, ay_ = r(20, 40), r(60, 80)
    _blend_disc(img, X, Y, case, ax_, ay_, r(12, 15), t["aorta"] * 0.6)
    _blend_disc(img, X, Y, case, ax_, ay_, r(9, 11), t["aorta"])
    sx_, sy_ = r(-5, 10), r(100, 120)
    _blend_disc(img, X, Y, case, sx_, sy_, r(17, 21), t["myo"] * 0.4)
    _blend_disc(img, X, Y, case, sx_, sy_, r(14, 17), t["marrow"])
    _blend_disc(img, X, Y, case, sx_, sy_ + r(26, 30), r(6, 8), t["csf"])
    # bright vessels in the lungs
    for _ in range(int(rng.integers(4, 10))):
        _blend_disc(img, X, Y, case, r(-130, 130), r(-60, 60), r(1.5, 4), t["aorta"] * r(0.4, 0.8))
    # smooth texture on everything (fine and coarse)
    tex = 1 + t["texture"] * (0.6 * smooth_field(rng, X.shape, (1, 3 / px, 3 / px))
                              + 0.8 * smooth_field(rng, X.shape, (1, 12 / px, 12 / px)))
    img *= np.clip(tex, 0.5, 1.6)
    return img


def bias_field(case: CardiacCase, X: np.ndarray, Y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Smooth multiplicative coil sensitivity, shape (nz, nx, ny), values ~0.6..1.5."""
    ang = rng.uniform(-math.pi, math.pi)
    grad = (X * math.cos(ang) + Y * math.sin(ang)) / 150.0
    px = min(case.spacing[:2])
    field_ = 1 + rng.uniform(0.1, 0.35) * grad + 0.12 * smooth_field(rng, X.shape, (2, 70 / px, 70 / px))
    return np.clip(field_, 0.55, 1.6).astype(np.float32)


# ----------------------------------------------------------------------------------------
# the heart, per frame
# ----------------------------------------------------------------------------------------

@dataclass
class HeartMaps:
    """Per-pixel quantities of the heart crop that do not change over the cycle.

    Arrays have shape (3, nz, cx, cy) or, where the three rows agree, (1, nz, cx, cy): for
    every slice, rows 0 and 1 are the sub-slices at -/+ a quarter of the slice thickness
    (averaged into the image: through-plane partial volume) and row 2 is the slice centre
    (used for the label map).
    """

    crop: tuple[slice, slice]
    h: np.ndarray  # (3, nz, 1, 1) height above the apex, mm
    x: np.ndarray  # heart-centric coordinates, mm
    y: np.ndarray
    rho: np.ndarray
    F: np.ndarray  # endocardial shape factor
    G1: np.ndarray  # (r0 F + wall W)^2: epicardial ring term at ED
    G2: np.ndarray  # (r0 F)^2
    K: np.ndarray  # contraction weight (0 in an akinetic sector)
    u: np.ndarray  # coordinates along / across the RV direction
    v: np.ndarray
    trab: np.ndarray  # angular trabeculation pattern 0..1
    bg: np.ndarray  # static background on the crop, (nz, cx, cy)
    blood_tex: np.ndarray  # (nz, cx, cy)
    myo_tex: np.ndarray  # (nz, cx, cy)


IMAGE_ROWS = slice(0, 2)
LABEL_ROWS = slice(2, 3)


def _angle_diff(a, b):
    """Signed difference a - b wrapped to [-pi, pi)."""
    return (a - b + np.pi) % (2 * np.pi) - np.pi


def heart_maps(case: CardiacCase, X: np.ndarray, Y: np.ndarray, bg: np.ndarray,
               rng: np.random.Generator) -> HeartMaps:
    """Crop the region the heart can occupy and precompute its static per-pixel maps.

    ``X``, ``Y``, ``bg``: body-frame coordinates and background, shape (nz, nx, ny).
    """
    lv, rv = case.lv, case.rv
    R_lv = (lv["r0"] * (1 + lv["ellip"] + lv["lobe3"]) + lv["wall"] * (1 + lv["septal"]))
    R_box = max(R_lv + rv["w"] + rv["wall"], 1.6 * R_lv) + 8.0
    hx = case.heart_xy[:, 0][:, None, None]
    hy = case.heart_xy[:, 1][:, None, None]
    near = (np.hypot(X - hx, Y - hy) < R_box).any(axis=0)
    ii = np.flatnonzero(near.any(axis=1))
    jj = np.flatnonzero(near.any(axis=0))
    crop = (slice(int(ii[0]), int(ii[-1]) + 1), slice(int(jj[0]), int(jj[-1]) + 1))

    # in-plane maps are the same for the three sub-slice rows: shape (1, nz, cx, cy)
    x = (X - hx)[(None, slice(None)) + crop]
    y = (Y - hy)[(None, slice(None)) + crop]
    sz = case.spacing[2]
    offsets = np.array([-sz / 4, sz / 4, 0.0])
    h = (offsets[:, None] + case.slice_h[None, :])[:, :, None, None]
    rho = np.hypot(x, y)
    theta = np.arctan2(y, x)
    F = 1 + lv["ellip"] * np.cos(2 * (theta - lv["ellip_dir"])) + lv["lobe3"] * np.cos(3 * (theta - lv["lobe3_dir"]))
    dsep = _angle_diff(theta, rv["alpha"])
    W = 1 + lv["septal"] * np.clip(np.cos(dsep), 0, None) ** 2
    K = np.ones((1, 1, 1, 1))
    sec = lv["sector"]
    if sec is not None:  # the infarct depends on depth too: shape (3, nz, cx, cy)
        d = np.abs(_angle_diff(theta, rv["alpha"] + sec["centre"]))
        S = np.where(d < sec["half_width"], 0.5 * (1 + np.cos(np.pi * d / sec["half_width"])), 0.0)
        depth = (lv["L"] - h) / lv["L"]
        S = S * ((depth >= sec["h_lo"]) & (depth <= sec["h_hi"]))
        W = W * (1 - sec["thin"] * S)
        K = 1 - 0.95 * S
    r0F = lv["r0"] * F
    G1 = (r0F + lv["wall"] * W) ** 2
    G2 = r0F ** 2
    ca, sa = math.cos(rv["alpha"]), math.sin(rv["alpha"])
    u = x * ca + y * sa
    v = -x * sa + y * ca
    # trabeculation: narrow angular bumps, tabulated over 1-degree bins then looked up
    grid = np.linspace(-np.pi, np.pi, 361)
    table = np.zeros_like(grid)
    for a, amp in zip(lv["trab_angles"], lv["trab_amp"]):
        table += amp * np.exp(-(_angle_diff(grid, a) / 0.07) ** 2)
    trab = np.clip(table, 0, 1)[np.rint((theta + np.pi) * (180 / np.pi)).astype(np.intp)]
    px = min(case.spacing[:2])
    shape2 = x.shape[1:]
    blood_tex = 1 + 0.05 * smooth_field(rng, shape2, (1, 6 / px, 6 / px))
    myo_tex = 1 + 0.08 * smooth_field(rng, shape2, (1, 4 / px, 4 / px))
    f32 = lambda a: np.ascontiguousarray(a, dtype=np.float32)  # noqa: E731
    return HeartMaps(crop=crop, h=f32(h), x=f32(x), y=f32(y), rho=f32(rho), F=f32(F),
                     G1=f32(G1), G2=f32(G2), K=f32(K), u=f32(u), v=f32(v), trab=f32(trab),
                     bg=f32(bg[(slice(None),) + crop]), blood_tex=f32(blood_tex), myo_tex=f32(myo_tex))


def _profile(depth: np.ndarray, q: float) -> np.ndarray:
    """Half-ellipsoid radius factor sqrt(1 - depth^q) for depth in [0, 1], else 0 (float32)."""
    inside = (depth >= 0) & (depth <= 1)
    return np.where(inside, np.sqrt(np.clip(1 - np.abs(depth) ** q, 0, 1)), 0.0).astype(np.float32)


def heart_geometry(case: CardiacCase, m: HeartMaps, rows: slice, phase: float, *, full: bool) -> dict:
    """Soft masks (0..1) of the heart structures at cine ``phase`` for the sub-slice ``rows``.

    Always returns ``endo`` (LV cavity incl. papillary muscles), ``epi`` (LV epicardium,
    i.e. cavity + myocardium) and ``rv`` (RV cavity outside the LV). With ``full`` also the
    image-only parts: ``rv_wall``, ``pm`` (papillary muscles), ``trab`` (trabeculation
    darkening) and ``above`` (per-row visibility of the atria above the valve plane).
    Arrays have shape (len(rows), nz, cx, cy).
    """
    lv, rv = case.lv, case.rv
    px = min(case.spacing[:2])
    pick = lambda a: a if a.shape[0] == 1 else a[rows]  # noqa: E731  (maps shared by all rows)
    h, rho = m.h[rows], m.rho[0]
    b = lv["L"] * (1 - lv["ls"] * phase)  # base height
    depth_epi = (b - h) / b
    depth_endo = (b - h) / (b - lv["t_apex"])
    p_epi = _profile(depth_epi, lv["q"])
    p_endo = _profile(depth_endo, lv["q"])
    squeeze = np.float32((1 - lv["k"]) * phase)
    stretch = np.float32(1 / (1 - lv["ls"] * phase))

    r_endo = (lv["r0"] * p_endo) * pick(m.F) * (1 - squeeze * pick(m.K))
    area = np.maximum(pick(m.G1) * p_epi ** 2 - pick(m.G2) * p_endo ** 2, 0) * stretch
    r_epi = np.sqrt(r_endo * r_endo + area)
    out = {"endo": soft_inside(rho - r_endo, px), "epi": soft_inside(rho - r_epi, px)}

    # RV: an ellipse on the septal side; its part outside the LV epicardium is the cavity
    r_mean = np.sqrt((lv["r0"] * p_endo * (1 - squeeze)) ** 2
                     + ((lv["r0"] + lv["wall"]) ** 2 * p_epi ** 2 - (lv["r0"] * p_endo) ** 2) * stretch)
    p_rv = _profile((b - h) / (b * rv["zeta"]), 2.0)
    w = rv["w"] * p_rv * (1 - (1 - rv["k"]) * phase)
    e = rv["gamma"] * r_mean
    a = np.maximum((r_mean + w - e) / 2, 0.5)
    c = e + a
    bb = np.maximum(rv["beta"] * r_mean * np.sqrt(p_rv), 0.5)
    outside_lv = (1 - out["epi"]) * (p_rv > 0)
    sd_rv = ellipse_sdf(m.u[0] - c, m.v[0], a, bb)
    out["rv"] = soft_inside(sd_rv, px) * outside_lv
    if not full:
        return out
    out["rv_wall"] = soft_inside(sd_rv - rv["wall"], px) * outside_lv

    # papillary muscles: discs at ~55% of the cavity radius, free-wall side, mid-ventricle
    r_cav = lv["r0"] * p_endo * (1 - squeeze)
    pm_z = ((depth_endo > 0.2) & (depth_endo < 0.8)).astype(np.float32)
    pm_r = lv["pm_radius"] * pm_z * np.minimum(1.0, 2.5 * p_endo)
    pm = np.zeros(h.shape[:2] + rho.shape[1:], dtype=np.float32)
    x, y = m.x[0], m.y[0]
    for off in lv["pm_offsets"]:
        ang = rv["alpha"] + math.pi + off
        d = np.hypot(x - 0.55 * r_cav * math.cos(ang), y - 0.55 * r_cav * math.sin(ang)) - pm_r
        np.maximum(pm, soft_inside(d, px) * pm_z, out=pm)
    out["pm"] = pm
    out["trab"] = pick(m.trab) * np.exp(-(((rho - r_endo + 1.8) / 1.8) ** 2))
    out["above"] = np.clip((h - b) / 6.0 + 0.3, 0, 1).astype(np.float32)
    return out


def render_heart_image(case: CardiacCase, m: HeartMaps, phase: float) -> np.ndarray:
    """Noise-free image of the heart crop at cine ``phase``, shape (nz, cx, cy) float32.

    Layers are composited over the static background in the order RV wall, RV blood,
    LV myocardium, LV blood (with papillary muscles and trabeculae), atria; the two
    sub-slices are then averaged (through-plane partial volume).
    """
    t = case.tissue
    px = min(case.spacing[:2])
    g = heart_geometry(case, m, IMAGE_ROWS, phase, full=True)
    img = np.broadcast_to(m.bg, g["epi"].shape).copy()
    _blend(img, t["myo"], g["rv_wall"])
    _blend(img, t["rv_blood"] * m.blood_tex, g["rv"])
    _blend(img, t["myo"] * m.myo_tex, g["epi"])
    cav = t["blood"] * m.blood_tex * (1 - 0.55 * g["trab"])
    _blend(cav, t["myo"] * m.myo_tex, g["pm"])
    _blend(img, cav, g["endo"])

    # above the valve plane: atria and aortic root (bright, unlabelled), only where visible
    above = g["above"]
    rows = np.flatnonzero(above.reshape(-1) > 0)
    if rows.size:
        lv, rv = case.lv, case.rv
        flat = img.reshape(-1, *img.shape[2:])
        xs = np.broadcast_to(m.x, img.shape).reshape(flat.shape)[rows]
        ys = np.broadcast_to(m.y, img.shape).reshape(flat.shape)[rows]
        vis = above.reshape(-1)[rows][:, None, None]
        sub = flat[rows]
        btex = np.broadcast_to(m.blood_tex, img.shape).reshape(flat.shape)[rows]
        R0 = lv["r0"] + lv["wall"]
        for ang, dist, rad in ((rv["alpha"] + math.pi + 0.3, 0.45 * R0, 0.95 * lv["r0"]),  # left atrium
                               (rv["alpha"] - 0.25, R0 + 8.0, 0.8 * lv["r0"]),  # right atrium
                               (rv["alpha"] - 1.2, 0.35 * R0, 13.0)):  # aortic root
            d = np.hypot(xs - dist * math.cos(ang), ys - dist * math.sin(ang))
            _blend(sub, t["myo"], soft_inside(d - rad - 2.5, px) * vis)
            _blend(sub, t["blood"] * btex, soft_inside(d - rad, px) * vis)
        flat[rows] = sub
    return img.mean(axis=0)


def render_heart_label(case: CardiacCase, m: HeartMaps, phase: float) -> np.ndarray:
    """Label map of the heart crop at the slice centres, shape (nz, cx, cy) uint8.

    1 RV cavity, 2 myocardium, 3 LV cavity (papillary muscles and trabeculae included).
    """
    g = heart_geometry(case, m, LABEL_ROWS, phase, full=False)
    cav = g["endo"][0] > 0.5
    epi = g["epi"][0] > 0.5
    lab = np.zeros(cav.shape, dtype=np.uint8)
    lab[(g["rv"][0] > 0.5) & ~epi] = 1
    lab[epi] = 2
    lab[cav] = 3
    return lab


# ----------------------------------------------------------------------------------------
# whole patient
# ----------------------------------------------------------------------------------------

def render_patient(case: CardiacCase, rng: np.random.Generator) -> tuple[np.ndarray, dict[int, np.ndarray]]:
    """Render the cine series and the ED/ES labels of one patient.

    Returns ``cine`` int16 of shape (nx, ny, nz, T) in NIfTI voxel order (before any storage
    transposition) and ``{frame_index: label (nx, ny, nz) uint8}`` for the ED and ES frames.
    """
    X, Y = body_coords(case)
    bg = background(case, X, Y, rng)
    bias = bias_field(case, X, Y, rng)
    maps = heart_maps(case, X, Y, bg, rng)
    del X, Y
    noise = NoisePool(rng, bg.size)
    phases = cine_phase(case.nb_frame, case.ed_index, case.es_index)
    nx, ny = case.matrix
    cine = np.empty((nx, ny, case.nz, case.nb_frame), dtype=np.int16)
    labels: dict[int, np.ndarray] = {}
    frame = np.empty_like(bg)
    ci, cj = maps.crop
    sigma = np.float32(case.noise_sigma)
    for ti, phase in enumerate(phases):
        frame[:] = bg
        frame[:, ci, cj] = render_heart_image(case, maps, float(phase))
        frame *= bias
        noisy = rician(noise, frame, sigma)
        np.clip(noisy, 0, 32767, out=noisy)
        cine[..., ti] = np.rint(noisy).astype(np.int16).transpose(1, 2, 0)
        if ti in (case.ed_index, case.es_index):
            full = np.zeros((case.nz, nx, ny), dtype=np.uint8)
            full[:, ci, cj] = render_heart_label(case, maps, float(phase))
            labels[ti] = full.transpose(1, 2, 0)
    return cine, labels


def info_cfg_text(case: CardiacCase) -> str:
    """The patient's ``Info.cfg`` text, keys in ACDC's order."""
    return (f"ED: {case.ed}\nES: {case.es}\nGroup: {case.group}\nHeight: {case.height_cm:.1f}\n"
            f"NbFrame: {case.nb_frame}\nWeight: {case.weight_kg:.1f}\n")


def write_patient(case: CardiacCase, rng: np.random.Generator, folder: Path) -> Path:
    """Write one patient folder (Info.cfg, 4D cine, ED/ES frames and their _gt labels)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    cine, labels = render_patient(case, rng)
    spacing = case.spacing
    if case.transpose:
        cine = cine.transpose(1, 0, 2, 3)
        labels = {k: v.transpose(1, 0, 2) for k, v in labels.items()}
        spacing = (spacing[1], spacing[0], spacing[2])
    name = f"patient{case.number:03d}"
    (folder / "Info.cfg").write_text(info_cfg_text(case))
    write_nifti(folder / f"{name}_4d.nii.gz", cine, spacing + (1.0,))
    for frame_no in sorted({case.ed, case.es}):
        ti = frame_no - 1
        write_nifti(folder / f"{name}_frame{frame_no:02d}.nii.gz", np.ascontiguousarray(cine[..., ti]), spacing)
        write_nifti(folder / f"{name}_frame{frame_no:02d}_gt.nii.gz", np.ascontiguousarray(labels[ti]), spacing)
    return folder


def patient_plan(cases: int) -> list[tuple[str, int, str]]:
    """(subset, patient number, group) of every patient: ``cases`` training + cases//3 testing."""
    plan = [("training", i + 1, GROUPS[i % len(GROUPS)]) for i in range(cases)]
    first_test = max(101, cases + 1)  # as ACDC: testing patients from 101
    plan += [("testing", first_test + i, GROUPS[i % len(GROUPS)]) for i in range(max(1, cases // 3))]
    return plan


def write_cardiac(out_dir: Path, cases: int, seed: int, *, workers: int = 2) -> Path:
    """Write the whole ACDC-layout phantom under ``out_dir``; returns ``out_dir``.

    Patients are independent (each has its own generator), so they are rendered by
    ``workers`` threads; numpy and zlib release the GIL, so two threads use two cores.
    The output does not depend on ``workers``.
    """
    out_dir = Path(out_dir)

    def one(item):
        subset, number, group = item
        case, rng = sample_case(number, group, seed)
        return write_patient(case, rng, out_dir / "database" / subset / f"patient{number:03d}")

    plan = patient_plan(cases)
    if workers <= 1 or len(plan) == 1:
        for item in plan:
            one(item)
    else:
        with ThreadPoolExecutor(max_workers=workers) as pool:
            list(pool.map(one, plan))  # list() re-raises the first error
    return out_dir

"""``mni``: nilearn's bundled MNI152 2009 T1 template (1 mm, 197×233×189) with its grey- and
white-matter probability maps, usable with no network.

Labels: a voxel is 1 (GM) or 2 (WM) when that tissue's probability is at least 0.5 and larger
than the other's, else 0 (background, CSF, skull). One labelled volume, case id ``MNI152``;
axial slices along Z.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path

import numpy as np

from medssl_utils.data.nifti import read_array, read_header
from medssl_utils.data.readers.base import Reader
from medssl_utils.data.volume import Volume, VolumeSet
from medssl_utils.errors import DataError

MNI_LABELS = {0: "background", 1: "GM", 2: "WM"}


def _nilearn_data_dir() -> Path:
    spec = importlib.util.find_spec("nilearn")  # locate without importing (nilearn imports slowly)
    if spec is None or not spec.submodule_search_locations:
        raise DataError("dataset 'mni' needs nilearn (pip install nilearn)")
    return Path(list(spec.submodule_search_locations)[0]) / "datasets" / "data"


def read_mni(spec: str = "mni") -> VolumeSet:
    d = _nilearn_data_dir()
    paths = {k: d / f"mni_icbm152_{k}_tal_nlin_sym_09a_converted.nii.gz" for k in ("t1", "gm", "wm")}
    for p in paths.values():
        if not p.is_file():
            raise DataError(f"{p}: nilearn's bundled MNI152 file is missing; reinstall nilearn")
    hdr = read_header(paths["t1"])

    def load_label() -> np.ndarray:
        gm = read_array(paths["gm"])
        wm = read_array(paths["wm"])
        return mni_tissue_labels(gm, wm)

    vol = Volume(
        case_id="MNI152", spacing=hdr.spacing, shape=tuple(hdr.shape[:3]), affine=hdr.affine,
        load_image=lambda: read_array(paths["t1"]), load_label=load_label,
        meta={"subset": "training"}, sources=tuple(str(p) for p in paths.values()),
    )
    return VolumeSet(spec=spec, format="mni", root=d, labels=dict(MNI_LABELS), modality="MR",
                     volumes=[vol], domain="brain-mni", task="MNI152", group="MR")


def mni_tissue_labels(gm: np.ndarray, wm: np.ndarray, threshold: float = 0.5) -> np.ndarray:
    """0/1/2 labels from GM and WM probability maps (see module docstring)."""
    labels = np.zeros(gm.shape, dtype=np.uint8)
    labels[(gm >= threshold) & (gm >= wm)] = 1
    labels[(wm >= threshold) & (wm > gm)] = 2
    return labels


READER = Reader(kind="mni", target=None, read=lambda target, opts, spec: read_mni(spec),
                doc="nilearn's bundled MNI152 T1 template; labels 1 = grey matter, 2 = white matter")

"""``natural``: scikit-image's bundled photographs, converted to grayscale: a small stand-in
for natural-image (ImageNet-style) pretraining, usable with no network.

Each photo gives one unlabelled single-slice volume, plus its four quadrants as further
volumes (more crops at native resolution). Photos are stored as ``photo[::-1].T`` so that,
like NIfTI slices, they display upright with ``imshow(slice.T, origin="lower")``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from medssl_utils.data.readers.base import Option, Reader
from medssl_utils.data.volume import Volume, VolumeSet
from medssl_utils.errors import DataError

NATURAL_PHOTOS = (
    "astronaut.png", "brick.png", "camera.png", "cell.png", "chelsea.png", "clock_motion.png",
    "coffee.png", "coins.png", "grass.png", "gravel.png", "hubble_deep_field.jpg", "ihc.png",
    "moon.png", "motorcycle_left.png", "motorcycle_right.png", "page.png", "retina.jpg",
    "rocket.jpg", "text.png",
)


def _skimage_data_dir() -> Path:
    try:
        import skimage.data
    except ImportError as exc:  # pragma: no cover - a dependency
        raise DataError("dataset 'natural' needs scikit-image (pip install scikit-image)") from exc
    return Path(skimage.data.__file__).parent


def load_photo(path: Path) -> np.ndarray:
    """A bundled photo as float32 grayscale in [0, 1], shape (rows, cols)."""
    from skimage import io
    from skimage.color import rgb2gray, rgba2rgb

    try:
        img = io.imread(str(path))
    except Exception as exc:
        raise DataError(f"{path}: could not read photograph ({exc})") from exc
    img = np.asarray(img)
    if img.ndim == 3 and img.shape[-1] == 4:
        img = rgba2rgb(img)
    if img.ndim == 3:
        img = rgb2gray(img)
    img = img.astype(np.float32)
    if img.max() > 1.0:
        img /= 255.0 if img.max() <= 255 else float(img.max())
    return img


def read_natural(spec: str = "natural", quadrants: bool = True) -> VolumeSet:
    d = _skimage_data_dir()
    volumes = []
    for name in NATURAL_PHOTOS:
        path = d / name
        if not path.is_file():
            raise DataError(f"{path}: scikit-image's bundled photograph is missing; reinstall scikit-image")
        stem = Path(name).stem
        crops = [("full", None)]
        if quadrants:
            crops += [(f"q{i}", i) for i in range(4)]
        for tag, quadrant in crops:
            def load(p=path, q=quadrant):
                img = load_photo(p)
                if q is not None:
                    h, w = img.shape[0] // 2, img.shape[1] // 2
                    img = img[(q // 2) * h:(q // 2 + 1) * h, (q % 2) * w:(q % 2 + 1) * w]
                return np.ascontiguousarray(img[::-1].T[:, :, None])
            shape = _photo_shape(path, quadrant)
            volumes.append(Volume(
                case_id=f"{stem}_{tag}", spacing=(1.0, 1.0, 1.0), shape=shape, affine=np.eye(4),
                load_image=load, meta={"subset": "training", "photo": stem}, sources=(str(path),),
            ))
    return VolumeSet(spec=spec, format="natural", root=d, labels={}, modality="photo", volumes=volumes,
                     domain="natural", task="natural", group="photo")


def _photo_shape(path: Path, quadrant) -> tuple[int, int, int]:
    from PIL import Image

    with Image.open(path) as im:
        cols, rows = im.size
    if quadrant is not None:
        rows, cols = rows // 2, cols // 2
    return (cols, rows, 1)


READER = Reader(
    kind="natural", target=None, read=lambda target, opts, spec: read_natural(spec, quadrants=opts["quadrants"]),
    doc="scikit-image's 19 bundled photographs (grayscale) + their quadrants",
    options=(Option("quadrants", "bool", default=True, doc="add each photo's four quadrants as further images"),),
)

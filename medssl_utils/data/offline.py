"""Moved to :mod:`medssl_utils.data.readers.mni` and ``.natural``; these names stay importable."""

from medssl_utils.data.readers.mni import MNI_LABELS, mni_tissue_labels, read_mni  # noqa: F401
from medssl_utils.data.readers.natural import NATURAL_PHOTOS, load_photo, read_natural  # noqa: F401

"""Moved to :mod:`medssl_utils.data.readers.msd` (and ``.folder``); these names stay importable."""

from medssl_utils.data.readers import detect_format  # noqa: F401
from medssl_utils.data.readers.folder import read_folder  # noqa: F401
from medssl_utils.data.readers.msd import read_dataset_json, read_msd, resolve_channel  # noqa: F401

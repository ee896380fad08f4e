"""Moved to :mod:`medssl_utils.data.readers.acdc`; this name stays importable."""

from medssl_utils.data.readers.acdc import ACDC_LABELS, LAYOUTS, PATIENT_RE, find_patient_dirs, parse_info_cfg, read_acdc  # noqa: F401

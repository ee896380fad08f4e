"""``medssl data summary PATH``: what a user needs to trust a download.

The layout is detected (ACDC, MSD, folder or DICOM) and every volume is decoded once, so broken
files show up here rather than in the middle of a training run. Problems with individual
files are collected in ``problems`` (one line each, naming the file) instead of stopping at
the first; a path that is not a dataset at all is an error. For DICOM, every series with a
problem (mixed orientations, missing slices, unequal spacing, no decoder for its compressed
pixel data…) is listed rather than stopping the summary; the series that can be read are
listed with their modality, shape, spacing and where the spacing came from.
"""

from __future__ import annotations

import os
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

from medssl_utils.data.readers import KINDS, detect_format, get_reader
from medssl_utils.data.specs import DatasetSpec, load_dataset, parse_spec
from medssl_utils.errors import MedsslError
from medssl_utils.progress import progress as progress_bar


def source_spec(source: str | os.PathLike | DatasetSpec) -> DatasetSpec:
    """What ``medssl data summary SOURCE`` reads: an existing folder is a download whose kind is
    detected (as before); anything else is a dataset spec (``KIND[:TARGET][?options]``), so the
    options that change what a reader finds (``channel``, ``modality``, ``bad_series``, ``cases``)
    apply. A path that does not exist and is not a spec is an error naming it."""
    if isinstance(source, DatasetSpec):
        return source
    text = str(source)
    path = Path(text).expanduser()
    if path.exists():
        return DatasetSpec(detect_format(path), str(path))
    kind = text.strip().split("?", 1)[0].split(":", 1)[0].strip().lower()
    if kind in KINDS and (":" in text or "?" in text or text.strip().lower() == kind):
        return parse_spec(text)
    return DatasetSpec(detect_format(path), str(path))  # raises: the path does not exist


def summarize(source: str | os.PathLike | DatasetSpec, *, decode: bool = True, progress: bool = False) -> dict:
    """Summary dict with keys: format, path, cases, labelled_volumes, unlabelled_frames,
    label_values, label_map, spacing_mm ([min, max] per axis), shape_range, slices_labelled,
    phases, groups, subsets, problems. ``source``: a dataset folder or a dataset spec
    (:func:`source_spec`)."""
    spec = source_spec(source)
    fmt = spec.kind
    path = spec.target if spec.target is not None and get_reader(fmt).target == "path" else str(spec)
    problems: list[str] = []
    if fmt == "dicom" and "bad_series" not in spec.opts:  # every bad series is a problem to list
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            vs = load_dataset(DatasetSpec(fmt, spec.target, (*spec.options, ("bad_series", "skip"))))
    else:
        vs = load_dataset(spec)
    if fmt == "dicom":
        problems += vs.meta.get("skipped", [])
    label_values: set[int] = set()
    slices_labelled = 0
    vols = vs.volumes
    bar = progress_bar(len(vols), "checking volumes", progress)
    for vol in vols:
        bar.update(1)
        if not decode:
            if vol.has_label:
                slices_labelled += vol.shape[2]
            continue
        try:
            image, label = vol.load()
        except MedsslError as exc:
            problems.append(str(exc))
            continue
        if float(np.ptp(image)) == 0.0:
            problems.append(f"{vol.sources[0]}: image is constant (value {float(image.flat[0])})")
        if label is not None:
            label_values.update(int(v) for v in np.unique(label))
            slices_labelled += label.shape[2]
            if not label.any():
                problems.append(f"{vol.sources[-1]}: label map is empty (all background)")
    bar.close()
    spacing = np.array([v.spacing for v in vs.volumes]) if vs.volumes else np.zeros((0, 3))
    shapes = np.array([v.shape for v in vs.volumes]) if vs.volumes else np.zeros((0, 3))
    labelled = [v for v in vs.volumes if v.has_label]
    if fmt == "acdc":
        unlabelled = sum(1 for v in vs.volumes if v.meta.get("phase") == "cine")
        missing_cine = sorted({v.case_id for v in vs.volumes} - {v.case_id for v in vs.volumes
                                                              if v.meta.get("phase") == "cine"})
        if missing_cine:
            problems.append(f"{len(missing_cine)} patients have no 4D cine file: {', '.join(missing_cine[:5])}"
                            + (" …" if len(missing_cine) > 5 else ""))
        no_gt = sorted({v.case_id for v in vs.volumes if v.meta.get("phase") in ("ED", "ES") and not v.has_label})
        if no_gt and any(v.meta.get("subset") == "training" and v.case_id in no_gt for v in vs.volumes):
            problems.append(f"training patients without _gt label files: {', '.join(no_gt[:5])}")
    else:
        unlabelled = len(vs.volumes) - len(labelled)
    out = {
        "format": fmt,
        "path": str(path),
        "cases": len(vs.case_ids),
        "labelled_volumes": len(labelled),
        "unlabelled_frames": unlabelled,
        "label_values": sorted(label_values),
        "label_map": {str(k): v for k, v in vs.labels.items()},
        "modality": vs.modality,
        "spacing_mm": [[round(float(spacing[:, i].min()), 4), round(float(spacing[:, i].max()), 4)]
                       for i in range(3)] if len(spacing) else [],
        "shape_range": [[int(shapes[:, i].min()), int(shapes[:, i].max())] for i in range(3)] if len(shapes) else [],
        "slices_labelled": int(slices_labelled),
        "phases": dict(Counter(v.meta.get("phase") or "-" for v in vs.volumes)),
        "groups": dict(Counter(v.meta.get("group") for v in vs.volumes if v.meta.get("phase") == "ED"))
        if fmt == "acdc" else {},
        "subsets": dict(Counter(v.meta.get("subset") or "-" for v in vs.volumes)),
        "problems": problems,
    }
    if fmt == "dicom":
        out["series"] = vs.meta["series"]
        out["modalities"] = dict(Counter(v.meta["modality"] for v in vs.volumes))
        out["volumes"] = [{"id": v.volume_id, "modality": v.meta["modality"], "description": v.meta["description"],
                           "shape": list(v.shape), "spacing_mm": [round(float(x), 4) for x in v.spacing],
                           "spacing_source": v.meta["spacing_source"], "files": len(v.sources)} for v in vs.volumes]
        out["ignored"] = vs.meta["ignored"]
    return out


def format_summary(s: dict) -> str:
    """Human-readable rendering of :func:`summarize`'s dict."""
    lines = [
        f"{s['path']}",
        f"  format            {s['format']} ({s['modality']})",
        f"  cases             {s['cases']}",
        f"  labelled volumes  {s['labelled_volumes']} ({s['slices_labelled']} labelled slices)",
        f"  unlabelled        {s['unlabelled_frames']} {'cine frames' if s['format'] == 'acdc' else 'volumes'}",
        f"  label values      {s['label_values']}  (map: {s['label_map'] or 'none'})",
    ]
    if s["spacing_mm"]:
        lines.append("  spacing (mm)      " + " × ".join(f"{lo:g}–{hi:g}" for lo, hi in s["spacing_mm"]))
        lines.append("  shape (voxels)    " + " × ".join(f"{lo}–{hi}" for lo, hi in s["shape_range"]))
    if s["format"] == "dicom":
        modalities = ", ".join(f"{k}: {v}" for k, v in s["modalities"].items())
        lines.append(f"  series            {s['series']} ({modalities})")
        lines += [f"    {v['id']:24s} {v['modality']:3s} {'×'.join(map(str, v['shape'])):>14s}  "
                  f"{' × '.join(f'{x:g}' for x in v['spacing_mm'])} mm ({v['spacing_source']})  {v['description']}"
                  for v in s["volumes"]]
        if s["ignored"]:
            lines.append(f"  ignored ({len(s['ignored'])}):")
            lines += [f"    - {x}" for x in s["ignored"]]
    if s["groups"]:
        lines.append("  groups            " + ", ".join(f"{k}: {v}" for k, v in sorted(s["groups"].items(), key=str)))
    lines.append("  subsets           " + ", ".join(f"{k}: {v}" for k, v in s["subsets"].items()))
    if s["problems"]:
        lines.append(f"  problems ({len(s['problems'])}):")
        lines += [f"    - {p}" for p in s["problems"]]
    else:
        lines.append("  problems          none")
    return "\n".join(lines)

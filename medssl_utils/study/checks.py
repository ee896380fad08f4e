"""Checks before a study runs: can each run's init weights be had (else it is skipped with the
reason), and do the notebooks and dataset folders it needs exist (else nothing runs)."""

from __future__ import annotations

import ast
import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from medssl_utils.errors import ParameterError
from medssl_utils.study.spec import Run, Study, path_kinds


def timm_weights_available(encoder: str) -> tuple[bool, str]:
    """Whether ``init: timm`` / ``imagenet`` can be resolved for ``encoder`` without downloading blindly.

    True when timm's pretrained weights are in the local Hugging Face / torch-hub cache (or
    the pretrained config names an existing file), or an installed package ships them
    (:mod:`medssl_utils.models.pretrained`), or, neither, when ``HF_HUB_OFFLINE`` is
    unset and the host serving them answers within 3 s (the notebook then downloads them).
    Returns ``(available, one-line explanation)``; nothing is downloaded here.
    """
    import timm
    from timm.models import get_pretrained_cfg

    from medssl_utils.models.pretrained import resolve_pretrained

    name = encoder.strip().removeprefix("tu-")
    if not timm.is_model_pretrained(name):
        return False, f"init 'timm': timm has no pretrained weights for encoder {name!r}"
    cfg = get_pretrained_cfg(name)
    if cfg is None:
        return False, f"init 'timm': timm has no pretrained config for encoder {name!r}"
    found = resolve_pretrained(name)
    if found.kind == "cache":
        return True, f"timm weights for {name!r} are cached at {found.where}"
    if found.kind == "package":
        return True, f"timm weights for {name!r} come from the installed {found.where}"
    source = f"https://huggingface.co/{cfg.hf_hub_id}" if cfg.hf_hub_id else str(cfg.url)
    help_ = ("medssl does not substitute random init; to run this arm offline, cache the weights (README: "
             "ImageNet weights offline) or give init 'file:PATH'")
    if os.environ.get("HF_HUB_OFFLINE", "").strip().lower() in ("1", "true", "yes", "on"):
        return False, (f"init 'timm': timm's pretrained weights for encoder {name!r} ({source}) are not in the "
                       f"local cache and HF_HUB_OFFLINE is set; {help_}")
    host = urlparse(source).hostname or ""
    if _reachable(host):
        return True, f"timm weights for {name!r} are not cached; the notebook downloads them from {source}"
    return False, (f"init 'timm': timm's pretrained weights for encoder {name!r} ({source}) are not in the "
                   f"local cache and {host} cannot be reached; {help_}")


def _reachable(host: str, timeout: float = 3.0) -> bool:
    if not host:
        return False
    try:
        with socket.create_connection((host, 443), timeout=timeout):
            return True
    except OSError:
        return False


def _notebook_defaults(notebook: Path) -> dict:
    """The literal default values of a notebook's parameters cell (unreadable ones left out)."""
    import papermill as pm

    out = {}
    for name, info in pm.inspect_notebook(str(notebook)).items():
        try:
            out[name] = ast.literal_eval(info.get("default", ""))
        except (ValueError, SyntaxError):
            continue
    return out


def blocked_runs(study: Study, runs: list[Run] | None = None,
                 check_timm: Callable[[str], tuple[bool, str]] | None = None) -> dict[str, str]:
    """``{run id: reason}`` for runs whose init weights cannot be had (they will be skipped).

    ``init: timm`` is checked with ``check_timm(encoder)`` (default
    :func:`timm_weights_available`, once per encoder); ``file:`` inits need the file to exist.
    Runs depending on these are not listed (the runner skips them as dependants).
    """
    check = check_timm or timm_weights_available
    verdicts: dict[str, tuple[bool, str]] = {}
    defaults: dict[str, dict] = {}
    out = {}
    for run in study.runs if runs is None else runs:
        init = str(run.params["init"])
        if init.strip().lower() in ("timm", "imagenet"):
            encoder = run.params.get("encoder")
            if encoder is None:
                if run.kind not in defaults:
                    defaults[run.kind] = _notebook_defaults(study.notebooks[run.kind])
                encoder = defaults[run.kind].get("encoder", "resnet18")
            if encoder not in verdicts:
                verdicts[encoder] = check(str(encoder))
            ok, reason = verdicts[encoder]
            if not ok:
                out[run.id] = reason
        elif init.startswith("file:") and not Path(init[5:]).exists():
            out[run.id] = (f"init {run.init!r}: weights file {init[5:]} does not exist (download it, or "
                           "edit the path in the study file)")
    return out


def preflight_problems(study: Study, runs: list[Run]) -> list[str]:
    """What stops ``runs`` from executing at all: missing notebooks or dataset folders."""
    problems = []
    for kind in sorted({r.kind for r in runs}):
        if not study.notebooks[kind].is_file():
            problems.append(f"notebooks.{kind}: {study.notebooks[kind]} does not exist")
    seen = set()
    for run in runs:
        specs = run.params.get("datasets") or [run.params.get("dataset")]
        for spec in specs:
            from medssl_utils.data.specs import parse_spec

            try:
                parsed = parse_spec(spec)
            except ParameterError:
                continue  # load_study already checked the specs; a bad one is reported there
            kind, target = parsed.kind, parsed.target
            if kind in path_kinds() and target not in seen:
                seen.add(target)
                if not Path(target).exists():
                    problems.append(f"dataset {spec!r} (used by {run.id}): {target} does not exist; "
                                    f"edit the path in {study.path.name}")
    return problems



"""Checks before a study runs: can each run's init weights be had (else it is skipped with the
reason), and do the notebooks and dataset folders it needs exist (else nothing runs)."""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlparse

from medssl_utils import params as P
from medssl_utils.errors import MedsslError, ParameterError
from medssl_utils.models.init_spec import parse_init
from medssl_utils.params import NOT_LITERAL, read_cell
from medssl_utils.study.spec import NOTEBOOK_FILES, path_kinds, Run, Study
from medssl_utils.validate import unknown_name


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

    from medssl_utils.models.pretrained import resolve_pretrained  # torch, like timm above: only when asked

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
    help_ = ("medssl does not substitute random init; to run this arm offline, cache the weights (docs/training.md: "
             "Supervised ImageNet weights) or give init 'file:PATH'")
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


def _notebook_cell(notebook: Path) -> dict[str, object]:
    """``{name: default}`` of a notebook's parameters cell (``NOT_LITERAL`` where the default is not
    a literal); ``{}`` when the file is missing (reported by :func:`preflight_problems`)."""
    return read_cell(notebook)[0] if notebook.is_file() else {}


def _notebook_defaults(notebook: Path) -> dict:
    """The literal default values of a notebook's parameters cell (unreadable ones left out)."""
    return {k: v for k, v in _notebook_cell(notebook).items() if v is not NOT_LITERAL}


def check_parameters(study: Study, runs: list[Run] | None = None) -> None:
    """Every notebook parameter the study sets, checked before anything runs (also by ``--dry-run``).

    Each name must be a parameter of the notebook the run executes: declared by
    :mod:`medssl_utils.params` for that notebook, or in the parameters cell of the notebook the
    study names (``notebooks:``). Declared parameters are then checked as the notebook's
    validation cell checks them: the run's config is made from the notebook's defaults and the
    study's values (a ``stage:`` or ``file:`` init that does not exist yet stands for a checkpoint).
    Raises :class:`ParameterError` ``"<study file>: <key path>: <what is wrong and what is allowed>"``.
    """
    import re

    cells = {kind: _notebook_cell(nb) for kind, nb in study.notebooks.items()}
    seen: set = set()
    for run in study.runs if runs is None else runs:
        if not study.notebooks[run.kind].is_file():
            continue  # its parameters cannot be read; preflight_problems names the missing notebook
        notebook = NOTEBOOK_FILES[run.kind].removesuffix(".ipynb")
        declared = P.declared(notebook)
        cell = cells.get(run.kind, {})
        where = run.sources
        for name in run.params:
            if name not in declared and name not in cell:
                other = [k for k, nb in NOTEBOOK_FILES.items() if k != run.kind and name in P.declared(nb[:-6])]
                text = (f"not a parameter of {NOTEBOOK_FILES[run.kind]} (it is one of {NOTEBOOK_FILES[other[0]]}'s: "
                        f"set it in {other[0]}.params)" if other else
                        unknown_name(name, set(declared) | set(cell), f"a parameter of {NOTEBOOK_FILES[run.kind]}"))
                raise _located(study, run, name, text)
        values = {k: v for k, v in cell.items() if k in declared and v is not P.NOT_LITERAL}
        values.update({k: v for k, v in run.params.items() if k in declared})
        if _init_file(values.get("init")) is not None and not _init_file(values["init"]).is_file():
            values["init"] = f"file:{os.devnull}"  # made by a stage later, or skipped (blocked_runs)
        key = repr(sorted((k, repr(v)) for k, v in values.items() if k not in ("run_dir", "seed")))
        if key in seen:
            continue
        seen.add(key)
        try:
            P.config_class(notebook)(**values)
        except MedsslError as exc:
            text = str(exc)
            found = re.match(r"([A-Za-z_]\w*)((?:\.\w+)*)(: )?", text)
            name = found.group(1) if found and found.group(1) in declared and found.group(1) in where else None
            if name and found.group(3):  # "augment.flip_p: not an option ...": the key path says it
                raise ParameterError(f"{study.path}: {where[name]}{found.group(2)}: {text[found.end():]}") from None
            raise _located(study, run, name, text) from None


def _located(study: Study, run: Run, name: str | None, text: str) -> ParameterError:
    """``"<study file>: <key that set parameter name>: text"`` (the run's own key when unknown)."""
    key = run.sources.get(name) if name else None
    return ParameterError(f"{study.path}: {key or _run_key(run)}: {text}")


def _init_file(init) -> Path | None:
    """The weights file an init names (``file:PATH``, a checkpoint path), else None."""
    try:
        kind, path = parse_init(init)
    except ParameterError:
        return None
    return path if kind == "path" else None


def _run_key(run: Run) -> str:
    """Where a run is set in its study file, e.g. ``pretrain.stages.byol`` or ``finetune.strategies.random``."""
    if run.kind == "pretrain":
        return f"pretrain.stages.{run.name}"
    return f"finetune.{f'tasks.{run.task}.' if run.task else ''}strategies.{run.name}"


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
                from medssl_utils.training.config import FinetuneConfig  # only here: imports torch

                encoder = defaults[run.kind].get("encoder", FinetuneConfig.encoder)  # a notebook without one
            if encoder not in verdicts:
                verdicts[encoder] = check(str(encoder))
            ok, reason = verdicts[encoder]
            if not ok:
                out[run.id] = reason
        elif init.startswith("file:") and Path(init[5:]).is_dir():
            out[run.id] = (f"init {run.init!r}: {init[5:]} is a folder, not a weights file (give the file in it: "
                           "edit the path in the study file)")
        elif init.startswith("file:") and not Path(init[5:]).exists():
            out[run.id] = (f"init {run.init!r}: weights file {init[5:]} does not exist (download it, or "
                           "edit the path in the study file)")
    return out


def preflight_problems(study: Study, runs: list[Run]) -> list[str]:
    """What stops ``runs`` from executing at all: missing notebooks or dataset folders, a results
    folder that is a file."""
    problems = []
    if study.results_dir.exists() and not study.results_dir.is_dir():
        problems.append(f"results_dir: {study.results_dir} is a file; expected a folder for the study's runs")
    for kind in sorted({r.kind for r in runs}):
        if not study.notebooks[kind].is_file():
            problems.append(f"notebooks.{kind}: {study.notebooks[kind]} does not exist")
    seen = set()
    for run in runs:
        specs = run.params.get("datasets") or [run.params.get("dataset")]
        for spec in specs:
            from medssl_utils.data.specs import parse_spec  # the data layer (torch): only for a run's datasets

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



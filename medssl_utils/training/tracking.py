"""Experiment trackers: a run's curves in TensorBoard or Weights & Biases, beside its own record.

A run directory's ``history.csv`` and ``result.json`` stay the record (the report, the claims and
resuming read only them). The ``trackers`` parameter of a run (notebook, study file or config)
sends the same rows, step for step, to

- ``tensorboard``: lightning Fabric's own ``TensorBoardLogger``, event files in
  ``RUN_DIR/tensorboard/`` (no server, no account: ``tensorboard --logdir results/quick``);
- ``wandb``: a Weights & Biases run, **offline** unless ``WANDB_MODE`` says otherwise (files in
  ``RUN_DIR/wandb/``; ``wandb sync RUN_DIR/wandb/offline-run-*`` uploads them), project and group =
  the study, name = the run id (from the study runner's ``study.json``; a run started by hand:
  project ``medssl``, name = the run directory's name), config = the run's parameters, and the
  lineage of its weights once the run ends.

Only the writing process (rank 0) tracks. A resumed run appends to the same curves: TensorBoard
purges events at and after the first step logged again (those of the interrupted session after
its last checkpoint, which ``history.csv`` dropped too); a W&B offline run cannot be resumed (W&B
itself), so a resumed run is a second offline run with the same id — or replay the finished run
with :func:`export_runs` (``medssl export wandb RESULTS_DIR``), which also covers studies run
before tracking was switched on.

The packages are an optional extra (``pip install -e '.[tracking]'``), imported only when a
tracker is asked for; a missing one is one line naming the tracker and the install command.
MLflow is not offered: its file store now refuses to start without an opt-out, and its SQLite
store on a cluster's shared file system breaks under concurrent writers.
"""

from __future__ import annotations

import json
import math
import os
import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path

from medssl_utils.errors import MedsslError, ParameterError
from medssl_utils.fileio import atomic_write
from medssl_utils.rundir import read_json_object

TRACKERS = ("tensorboard", "wandb")
_PACKAGES = {"tensorboard": "tensorboard", "wandb": "wandb"}


def check_trackers(value) -> tuple[str, ...]:
    """``trackers`` as a tuple of names from :data:`TRACKERS` (a list, a tuple, or one name)."""
    names = (value,) if isinstance(value, str) else value
    if not isinstance(names, (list, tuple)) or not all(isinstance(n, str) for n in names):
        raise ParameterError(f"trackers={value!r}: expected a list of names from {list(TRACKERS)} (or [])")
    unknown = [n for n in names if n not in TRACKERS]
    if unknown:
        raise ParameterError(f"trackers={value!r}: {unknown[0]!r} is not a tracker; expected some of {list(TRACKERS)}")
    if len(set(names)) != len(names):
        raise ParameterError(f"trackers={value!r}: a tracker is named twice")
    return tuple(names)


def _missing(tracker: str) -> MedsslError:
    return MedsslError(f"trackers: {tracker!r} needs the {_PACKAGES[tracker]} package: pip install -e '.[tracking]' "
                       f"(or pip install {_PACKAGES[tracker]})")


def metrics_of(row: Mapping) -> dict[str, float]:
    """The numbers of a history row worth a curve: finite ints and floats, ``step`` excluded."""
    out = {}
    for k, v in row.items():
        if k == "step" or isinstance(v, bool) or not isinstance(v, (int, float)):
            continue
        if math.isfinite(float(v)):
            out[k] = float(v)
    return out


def run_identity(run_dir: Path) -> dict:
    """``study``, ``run_id``, ``group`` of a run: from the study runner's ``study.json`` when there is
    one, else project ``medssl`` and the run directory's name."""
    meta, _ = read_json_object(Path(run_dir) / "study.json")
    if meta and meta.get("study") and meta.get("run_id"):
        return {"project": str(meta["study"]), "group": str(meta["study"]), "run_id": str(meta["run_id"])}
    return {"project": "medssl", "group": None, "run_id": Path(run_dir).resolve().name}


def _flat(d: Mapping, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(_flat(v, key + "/"))
        elif isinstance(v, (list, tuple)):
            out[key] = json.dumps(v, default=str)
        elif v is None or isinstance(v, (bool, int, float, str)):
            out[key] = v
        else:
            out[key] = str(v)
    return out


class TensorBoardTracker:
    """Rows as scalars in ``log_dir`` through Fabric's ``TensorBoardLogger``; the writer opens at
    the first row, purging events from that step on (a resumed run's curves continue)."""

    name = "tensorboard"

    def __init__(self, log_dir: Path, params: Mapping | None = None):
        try:
            from lightning_fabric.loggers import TensorBoardLogger
            from lightning_fabric.loggers.tensorboard import _TENSORBOARD_AVAILABLE
        except ImportError:
            raise _missing("tensorboard") from None
        if not _TENSORBOARD_AVAILABLE:
            raise _missing("tensorboard")
        self._cls = TensorBoardLogger
        self.log_dir = Path(log_dir)
        self.params = dict(params or {})
        self._logger = None

    def _open(self, first_step: int):
        self._logger = self._cls(root_dir=str(self.log_dir.parent), name=self.log_dir.name, version="",
                                 default_hp_metric=False, purge_step=first_step)
        if first_step == 0 and self.params:
            self._logger.log_hyperparams(_flat(self.params))

    def log(self, row: Mapping) -> None:
        step = int(row["step"])
        if self._logger is None:
            self._open(step)
        metrics = metrics_of(row)
        if metrics:
            self._logger.log_metrics(metrics, step=step)

    def close(self, result: Mapping | None = None) -> None:
        if self._logger is None:
            return
        if result and result.get("lineage_name"):
            self._logger.experiment.add_text("lineage", str(result["lineage_name"]))
        self._logger.finalize("success" if (result or {}).get("status") == "complete" else "failed")
        self._logger = None


class WandbTracker:
    """Rows as a W&B run's history (``step`` = the row's step), offline by default."""

    name = "wandb"

    def __init__(self, run_dir: Path, params: Mapping | None = None, identity: Mapping | None = None,
                 mode: str | None = None):
        try:
            import wandb
        except ImportError:
            raise _missing("wandb") from None
        self._wandb = wandb
        ident = dict(identity or run_identity(run_dir))
        run_dir = Path(run_dir)
        run_dir.mkdir(parents=True, exist_ok=True)
        self.run = wandb.init(project=ident["project"], group=ident.get("group"), name=ident["run_id"],
                              id=_wandb_id(ident), dir=str(run_dir), config=_flat(dict(params or {})),
                              mode=mode or os.environ.get("WANDB_MODE", "offline"), reinit="create_new",
                              settings=wandb.Settings(silent=True, console="off", x_disable_stats=True))

    def log(self, row: Mapping) -> None:
        metrics = metrics_of(row)
        if metrics:
            self.run.log(metrics, step=int(row["step"]))

    def close(self, result: Mapping | None = None) -> None:
        if self.run is None:
            return
        if result:
            if result.get("lineage") is not None:
                self.run.config.update({"lineage": json.dumps(result["lineage"], default=str),
                                        "lineage_name": result.get("lineage_name")}, allow_val_change=True)
            for k, v in _flat({k: result[k] for k in ("test", "status", "steps") if k in result}).items():
                if isinstance(v, (int, float, str)) and not isinstance(v, bool):
                    self.run.summary[k] = v
        self.run.finish(exit_code=0 if (result or {}).get("status") == "complete" else 1)
        self.run = None


def _wandb_id(ident: Mapping) -> str:
    """A W&B run id from the study and run id: the same run gets the same id (W&B allows [a-zA-Z0-9_-])."""
    import hashlib

    return hashlib.sha1(f"{ident['project']}/{ident['run_id']}".encode()).hexdigest()[:16]


def open_trackers(names: Sequence[str], run_dir: Path, params: Mapping | None = None) -> list:
    """The trackers ``names`` of the run in ``run_dir`` (the writing process only), opened."""
    out = []
    try:
        for name in check_trackers(list(names)):
            if name == "tensorboard":
                out.append(TensorBoardTracker(Path(run_dir) / "tensorboard", params))
            else:
                out.append(WandbTracker(Path(run_dir), params))
    except BaseException:
        for t in out:
            t.close(None)
        raise
    return out


# ============================================================================ replaying finished runs
def _finished_runs(root: Path) -> list[Path]:
    found = []
    for dirpath, dirnames, filenames in os.walk(root):
        if "result.json" in filenames:
            found.append(Path(dirpath))
            dirnames[:] = []
        else:
            dirnames[:] = sorted(d for d in dirnames if not d.startswith(".") and d not in
                                 ("checkpoints", "predictions", "tensorboard", "wandb", "report"))
    return sorted(found)


def export_runs(tracker: str, results_dir: str | os.PathLike, out: str | os.PathLike | None = None, *,
                force: bool = False, mode: str | None = None, log=print) -> dict:
    """Replay the ``history.csv`` of every complete run under ``results_dir`` into ``tracker``.

    ``tensorboard``: one folder per run under ``out`` (default ``RESULTS_DIR/tensorboard``),
    named by its run id (``tensorboard --logdir OUT``); rewritten on every export. ``wandb``: one
    offline run per run in ``out`` (default ``RESULTS_DIR/wandb``); runs already exported (the
    same ``result.json`` ``finished`` time, recorded in ``OUT/exported.json``) are left alone
    unless ``force``. Returns ``{"exported": [...], "skipped": [(run, why), ...], "out": path}``.
    """
    import pandas as pd  # here: the CLI's other commands do not need it

    check_trackers([tracker])
    root = Path(results_dir).expanduser()
    if not root.is_dir():
        raise ParameterError(f"{root}: not a folder; expected a results folder holding run directories")
    out = Path(out).expanduser() if out is not None else root / tracker
    runs = _finished_runs(root)
    if not runs:
        raise ParameterError(f"{root}: no run directories (folders with result.json) found")
    if tracker == "tensorboard":
        TensorBoardTracker(out / "probe")  # the package check, before anything is written
    else:
        try:
            import wandb  # noqa: F401
        except ImportError:
            raise _missing("wandb") from None
    record_path = out / "exported.json"
    record, _ = read_json_object(record_path)
    record = record or {}
    exported, skipped = [], []
    for rd in runs:
        result, why = read_json_object(rd / "result.json")
        ident = run_identity(rd)
        if not ident["group"]:  # not a study's run: named by its folder under results_dir
            ident["run_id"] = rd.relative_to(root).as_posix() if rd != root else rd.name
        rid = ident["run_id"]
        if why or not result or result.get("status") != "complete":
            skipped.append((rid, why and f"result.json {why}" or f"status {(result or {}).get('status')!r}"))
            continue
        if not (rd / "history.csv").is_file():
            skipped.append((rid, "no history.csv"))
            continue
        try:
            history = pd.read_csv(rd / "history.csv")
        except (ValueError, OSError) as exc:
            skipped.append((rid, f"history.csv unreadable ({type(exc).__name__})"))
            continue
        if "step" not in history.columns:
            skipped.append((rid, "history.csv has no step column"))
            continue
        stamp = str(result.get("finished") or (rd / "result.json").stat().st_mtime)
        if tracker == "wandb" and not force and record.get(rid) == stamp:
            skipped.append((rid, "already exported (--force exports it again)"))
            continue
        params, _ = read_json_object(rd / "params.json")
        rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
                for r in history.to_dict("records")]
        if tracker == "tensorboard":
            target = out / rid
            if target.exists():
                shutil.rmtree(target)
            t = TensorBoardTracker(target, params or {})
        else:
            target = out / rid
            target.mkdir(parents=True, exist_ok=True)
            t = WandbTracker(target, params or {}, ident, mode=mode)
        try:
            for row in rows:
                t.log(row)
        finally:
            t.close(result)
        record[rid] = stamp
        exported.append(rid)
        log(f"{tracker}: {rid} ({len(rows)} rows) -> {target}")
    out.mkdir(parents=True, exist_ok=True)
    atomic_write(record_path, json.dumps(record, indent=2, sort_keys=True))
    for rid, why in skipped:
        log(f"{tracker}: skipped {rid}: {why}")
    return {"exported": exported, "skipped": skipped, "out": out}

"""A run directory (see docs/run-format.md): parameters, history, result, checkpoints.

Every file is written atomically (temporary file in the same folder, then ``os.replace``),
so an interrupted run never leaves a half-written ``result.json`` or ``history.csv``.
"""

from __future__ import annotations

import json
import math
from datetime import datetime, timezone
from pathlib import Path

from medssl_utils.errors import DataError, ParameterError
from medssl_utils.fileio import atomic_write


def read_json_object(path: Path) -> tuple[dict | None, str | None]:
    """``(object, None)``; ``(None, None)`` when ``path`` does not exist; ``(None, why)`` when it cannot
    be used, ``why`` following the file's name: "is empty", "is not valid JSON (…)", "is not UTF-8
    text (byte 0xe9 at offset 17)", "holds a JSON list, expected an object", "cannot be read (…)".
    The one reader of medssl's JSON run files (run directories, study records, the report)."""
    try:
        raw = Path(path).read_bytes()
    except (FileNotFoundError, NotADirectoryError):
        return None, None
    except OSError as exc:
        return None, f"cannot be read ({exc.strerror or exc})"
    try:
        obj = json.loads(raw.decode("utf-8"))
    except UnicodeDecodeError as exc:
        return None, f"is not UTF-8 text (byte {raw[exc.start]:#04x} at offset {exc.start})"
    except ValueError as exc:
        if not raw.strip():
            return None, "is empty"
        return None, f"is not valid JSON ({type(exc).__name__}: {' '.join(str(exc).split())[:120]})"
    if not isinstance(obj, dict):
        return None, f"holds a JSON {type(obj).__name__}, expected an object"
    return obj, None


def _json_default(o):
    if isinstance(o, Path):
        return str(o)
    if hasattr(o, "item"):
        return o.item()
    if isinstance(o, (set, tuple)):
        return list(o)
    raise TypeError(f"not JSON serialisable: {type(o).__name__}")


def _clean(o):
    """NaN/inf → None, so result.json stays strict JSON."""
    if isinstance(o, float) and not math.isfinite(o):
        return None
    if isinstance(o, dict):
        return {str(k): _clean(v) for k, v in o.items()}
    if isinstance(o, (list, tuple)):
        return [_clean(v) for v in o]
    return o


def write_json(path: Path, obj) -> None:
    atomic_write(path, json.dumps(_clean(json.loads(json.dumps(obj, default=_json_default))), indent=2))


def now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


class RunDir:
    """Writer for one run directory.

    ``writer=False`` (the non-zero ranks of a multi-process run) keeps the history in memory
    but writes nothing: one process, rank 0, owns the files.
    """

    def __init__(self, path, writer: bool = True):
        if path is None or str(path).strip() == "":
            raise ParameterError("run_dir: expected a folder path for this run's outputs")
        self.path = Path(path)
        self.checkpoints = self.path / "checkpoints"
        self.rows: list[dict] = []
        self.writer = writer
        self.trackers: list = []  # medssl_utils.training.tracking: each row goes to them too (rank 0)

    @property
    def result_path(self) -> Path:
        return self.path / "result.json"

    def read_result(self) -> dict | None:
        """``result.json`` as a dict; None when there is none. One that cannot be read raises
        :class:`DataError`: it is never silently treated as absent and replaced."""
        return self._read("result.json")

    def read_params(self) -> dict | None:
        """``params.json`` as a dict (None when there is none; unreadable: :class:`DataError`)."""
        return self._read("params.json")

    def _read(self, name: str) -> dict | None:
        path = self.path / name
        obj, why = read_json_object(path)
        if why:
            raise DataError(f"{path}: unreadable (the file {why}); run_dir holds a damaged run: delete the file, "
                            "or set overwrite=True to run again")
        return obj

    def write_params(self, params: dict) -> None:
        if self.writer:
            write_json(self.path / "params.json", params)

    def write_result(self, result: dict) -> None:
        if self.writer:
            write_json(self.result_path, result)

    def write_text(self, name: str, text: str) -> None:
        if self.writer:
            atomic_write(self.path / name, text)

    def log(self, row: dict) -> None:
        self.rows.append(row)
        if self.writer:
            for tracker in self.trackers:
                tracker.log(row)

    def close_trackers(self, result: dict | None) -> None:
        """Finish every tracker (with the run's result: its lineage and test metrics), even if one fails."""
        trackers, self.trackers = self.trackers, []
        errors = []
        for tracker in trackers:
            try:
                tracker.close(result)
            except Exception as exc:  # noqa: BLE001 - a tracker's failure must not hide the run's own outcome
                errors.append(f"{tracker.name}: {type(exc).__name__}: {exc}")
        if errors:
            print(f"{self.path}: could not finish tracker(s): " + "; ".join(errors))

    def flush_history(self) -> None:
        if self.rows and self.writer:
            import pandas as pd  # here, not at the top: the CLI (study status, --help) reads run files without it

            atomic_write(self.path / "history.csv", pd.DataFrame(self.rows).to_csv(index=False))

    def load_history(self, up_to_step: int) -> None:
        """Reload history rows of an interrupted run, keeping steps <= ``up_to_step``."""
        f = self.path / "history.csv"
        self.rows = []
        if f.is_file():
            import pandas as pd  # see flush_history

            df = pd.read_csv(f)
            df = df[df["step"] <= up_to_step]
            self.rows = [{k: v for k, v in r.items() if not (isinstance(v, float) and math.isnan(v))}
                         for r in df.to_dict("records")]

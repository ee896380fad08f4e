"""Experiment trackers (medssl_utils.training.tracking): a run's history.csv rows, step for step, in
TensorBoard event files and W&B offline runs, read back with tensorboard's EventAccumulator and by
decoding W&B's run file; resumed runs continue the same curves; ``medssl export`` replays finished runs."""

from __future__ import annotations

import json
import struct
import sys
import time
from pathlib import Path

import pandas as pd
import pytest
from training_kit import fin, interrupted

from medssl_utils.cli import main
from medssl_utils.errors import MedsslError, ParameterError
from medssl_utils.training import FinetuneConfig
from medssl_utils.training.tracking import check_trackers, export_runs

pytest.importorskip("tensorboard", reason="the tracking extra: pip install -e '.[tracking]'")
pytest.importorskip("wandb", reason="the tracking extra: pip install -e '.[tracking]'")


def tb_scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    """tag -> [(step, value)] as TensorBoard shows them (purged events removed)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(str(log_dir), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def wandb_records(path: Path) -> list:
    """The records of a W&B run file (``run-<id>.wandb``): a 7-byte header, then LevelDB-log records
    (4-byte CRC, 2-byte length, 1-byte type: full / first / middle / last) in 32 KiB blocks, each a
    ``wandb_internal_pb2.Record``."""
    from wandb.proto import wandb_internal_pb2 as pb

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B"
    pos, block, buf, payloads = 7, 32768, b"", []
    while pos + 7 <= len(data):
        left = block - pos % block
        if left < 7:
            pos += left
            continue
        _crc, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        if length == 0 and kind == 0:  # block padding
            pos += left
            continue
        if pos + 7 + length > len(data):  # the last record is still being written
            break
        payload, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 1:
            payloads.append(payload)
        elif kind == 2:
            buf = payload
        elif kind == 3:
            buf += payload
        elif kind == 4:
            payloads.append(buf + payload)
            buf = b""
    records = []
    for p in payloads:
        r = pb.Record()
        r.ParseFromString(p)
        records.append(r)
    return records


def wandb_run(folder: Path, wait_s: float = 60) -> dict:
    """The one offline run under ``folder``: its identity, config and history rows. W&B's service
    process writes the file after ``finish()`` returns (in a loaded CI run its records were not on
    disk yet when first read), so this waits up to ``wait_s`` for the run's exit record."""
    files = sorted(folder.glob("wandb/offline-run-*/run-*.wandb"))
    assert len(files) == 1, files
    deadline = time.monotonic() + wait_s
    while True:
        records = wandb_records(files[0])
        kinds = [r.WhichOneof("record_type") for r in records]
        if "exit" in kinds or time.monotonic() > deadline:
            break
        time.sleep(0.2)
    assert "run" in kinds and "exit" in kinds, f"{files[0]}: records {kinds}"
    out: dict = {"history": [], "config": {}}
    for r in records:
        kind = r.WhichOneof("record_type")
        if kind == "run":
            out.update(project=r.run.project, group=r.run.run_group, name=r.run.display_name, id=r.run.run_id)
            out["config"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.run.config.update})
        elif kind == "config":
            out["config"].update({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.config.update})
        elif kind == "history":
            out["history"].append({i.key or "/".join(i.nested_key): json.loads(i.value_json) for i in r.history.item})
        elif kind == "exit":
            out["exit_code"] = r.exit.exit_code
    return out


def history_steps(run_dir: Path, column: str) -> list[tuple[int, float]]:
    h = pd.read_csv(run_dir / "history.csv")
    h = h[h[column].notna()]
    return [(int(s), float(v)) for s, v in zip(h["step"], h[column])]


def test_trackers_parameter_is_checked():
    assert check_trackers(["wandb", "tensorboard"]) == ("wandb", "tensorboard")
    assert check_trackers("tensorboard") == ("tensorboard",)
    with pytest.raises(ParameterError, match="'mlflow' is not a tracker; expected some of"):
        check_trackers(["mlflow"])
    with pytest.raises(ParameterError, match="named twice"):
        check_trackers(["wandb", "wandb"])
    with pytest.raises(ParameterError, match="trackers="):
        FinetuneConfig(run_dir="x", trackers=[1])


def test_a_run_logs_its_history_to_tensorboard_and_wandb_offline(tmp_path, monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    run = tmp_path / "ft"
    r = fin(run, max_steps=8, eval_every=4, log_every=2, trackers=["tensorboard", "wandb"])
    assert r["status"] == "complete" and json.loads((run / "params.json").read_text())["trackers"] == [
        "tensorboard", "wandb"]
    tb = tb_scalars(run / "tensorboard")
    for column in ("loss", "lr", "val_dice"):
        assert [(s, pytest.approx(v, rel=1e-6)) for s, v in history_steps(run, column)] == tb[column]
    wb = wandb_run(run)
    assert wb["project"] == "medssl" and wb["name"] == "ft" and wb["exit_code"] == 0
    assert wb["config"]["lr"] == pytest.approx(1e-3) and wb["config"]["lineage_name"] == r["lineage_name"]
    logged = [(h["_step"], h["loss"]) for h in wb["history"] if "loss" in h]
    assert [(s, pytest.approx(v, rel=1e-9)) for s, v in history_steps(run, "loss")] == logged


def test_a_resumed_run_continues_the_same_tensorboard_curve(tmp_path):
    import medssl_utils.training.loop  # noqa: F401

    run = tmp_path / "ft"
    monkeypatch = pytest.MonkeyPatch()
    try:
        interrupted(monkeypatch, 7, lambda: fin(run, max_steps=12, eval_every=4, log_every=1,
                                                trackers=["tensorboard"]))
    finally:
        monkeypatch.undo()
    before = tb_scalars(run / "tensorboard")["loss"]
    steps = [s for s, _ in before]
    assert steps[:4] == [1, 2, 3, 4] and max(steps) > 4  # steps after the last checkpoint (4), lost on resume
    r = fin(run, max_steps=12, eval_every=4, log_every=1, trackers=["tensorboard"])
    assert r["status"] == "complete"
    after = tb_scalars(run / "tensorboard")["loss"]
    assert [s for s, _ in after] == list(range(1, 13))  # each step once: the orphaned ones were purged
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in history_steps(run, "loss")] == after


def test_a_missing_tracker_package_is_one_line_naming_the_extra(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)
    with pytest.raises(MedsslError, match=r"trackers: 'wandb' needs the wandb package: pip install -e '\.\[tracking\]'"):
        fin(tmp_path / "ft", trackers=["wandb"])
    assert json.loads((tmp_path / "ft" / "result.json").read_text())["status"] == "failed"


def test_export_replays_finished_runs_and_skips_the_rest(tmp_path, capsys):
    res = tmp_path / "results"
    fin(res / "finetune" / "random" / "seed0", max_steps=8, eval_every=4, log_every=2)
    (res / "finetune" / "broken").mkdir(parents=True)
    (res / "finetune" / "broken" / "result.json").write_text('{"status": "failed", "error": "x"}')
    assert main(["export", "tensorboard", str(res)]) == 0
    out = capsys.readouterr().out
    assert "1 run(s) exported" in out and "skipped finetune/broken: status 'failed'" in out
    tb = tb_scalars(res / "tensorboard" / "finetune" / "random" / "seed0")
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in history_steps(res / "finetune/random/seed0", "loss")] == \
        tb["loss"]
    # exported twice: the same curves, not two copies of them
    export_runs("tensorboard", res, log=lambda *_: None)
    assert tb_scalars(res / "tensorboard" / "finetune" / "random" / "seed0")["loss"] == tb["loss"]

    done = export_runs("wandb", res, log=lambda *_: None)
    assert done["exported"] == ["finetune/random/seed0"]
    wb = wandb_run(res / "wandb" / "finetune" / "random" / "seed0")
    assert wb["name"] == "finetune/random/seed0" and wb["exit_code"] == 0
    assert [h["_step"] for h in wb["history"]] == [s for s, _ in history_steps(res / "finetune/random/seed0", "step")]
    again = export_runs("wandb", res, log=lambda *_: None)
    assert again["exported"] == [] and ("finetune/random/seed0", "already exported (--force exports it again)") \
        in again["skipped"]

    assert main(["export", "tensorboard", str(tmp_path / "nowhere")]) == 2
    assert "not a folder; expected a results folder" in capsys.readouterr().err


def test_pretraining_logs_the_same_steps_as_its_history(tmp_path):
    from training_kit import pre_epoch

    run = tmp_path / "pre"
    r = pre_epoch(run, trackers=["tensorboard"])
    assert r["status"] == "complete"
    tb = tb_scalars(run / "tensorboard")
    assert [(s, pytest.approx(v, rel=1e-6)) for s, v in history_steps(run, "loss")] == tb["loss"]
    assert [s for s, _ in history_steps(run, "momentum")] == [s for s, _ in tb["momentum"]]  # BYOL's own column

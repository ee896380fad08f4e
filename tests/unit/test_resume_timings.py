"""A resumed run reports the time all its sessions spent, not only the last session's."""

from __future__ import annotations

import pytest

from medssl_utils.training import loop
from training_kit import fin, interrupted, pre


@pytest.fixture
def ten_seconds_per_step(monkeypatch):
    """A fake clock on which each optimiser step takes 10 s and nothing else takes time."""
    clock = {"t": 0.0}
    monkeypatch.setattr(loop.time, "perf_counter", lambda: clock["t"])
    real = loop.optimise

    def step(*a, **k):
        clock["t"] += 10.0
        return real(*a, **k)

    monkeypatch.setattr(loop, "optimise", step)


def test_finetune_total_time_spans_sessions(tmp_path, monkeypatch, ten_seconds_per_step):
    full = fin(tmp_path / "full")  # 8 steps, a resume state every 4
    assert full["timings"]["total_s"] == pytest.approx(80) and full["timings"]["resumed_at_step"] is None
    interrupted(monkeypatch, 6, lambda: fin(tmp_path / "cut"))  # steps 4 and 5 are lost with the interrupt
    resumed = fin(tmp_path / "cut")
    assert resumed["timings"]["resumed_at_step"] == 4
    assert resumed["timings"]["total_s"] == pytest.approx(40 + 40)  # 4 steps saved before, 4 steps after


def test_pretrain_total_time_spans_sessions(tmp_path, monkeypatch, ten_seconds_per_step):
    full = pre(tmp_path / "full", save_epochs=[], knn_every=0)
    steps = full["steps"]
    interrupted(monkeypatch, steps - 2, lambda: pre(tmp_path / "cut", save_epochs=[], knn_every=0))
    resumed = pre(tmp_path / "cut", save_epochs=[], knn_every=0)
    start = resumed["timings"]["resumed_at_step"]
    assert 0 < start < steps
    assert resumed["timings"]["total_s"] == pytest.approx(10 * steps) == full["timings"]["total_s"]

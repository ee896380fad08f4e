"""Toy-size training runs for the training tests (tests/unit/test_training.py, test_resume_timings.py)."""

from __future__ import annotations

import pytest

from medssl_utils import training
from medssl_utils.training import loop

TINY = dict(encoder="test_resnet", image_size=32, decoder_channels=(16, 8, 8, 8, 8), progress=False, device="cpu")
DATA = "phantom:cardiac?cases=4"
SMALL_BYOL = dict(hidden_dim=64, predictor_hidden_dim=64, projection_dim=16)


def pre_epoch(run_dir, **kw):
    """One epoch of small BYOL, no k-NN, probe or saved epochs (the faults' and protocol tests' stage)."""
    args = dict(method="byol", datasets=[DATA], epochs=1, batch_size=16, save_epochs=[], knn_every=0, probe_every=0,
                method_options=SMALL_BYOL, optimizer="adamw", log_every=1, run_dir=str(run_dir), **TINY)
    args.update(kw)
    return training.pretrain(**args)


def pre(run_dir, **kw):
    args = dict(method="byol", datasets=[DATA], epochs=2, batch_size=48, max_steps=None, save_epochs=[1],
                method_options=SMALL_BYOL, optimizer="adamw",
                knn_max_bank=64, knn_max_query=32, log_every=2, run_dir=str(run_dir), probe_every=0, **TINY)
    args.update(kw)
    return training.pretrain(**args)


def fin(run_dir, **kw):
    args = dict(dataset=DATA, init="random", labelled_slices=6, max_steps=8, eval_every=4, batch_size=4, lr=1e-3,
                run_dir=str(run_dir), probe_init=False, **TINY)
    args.update(kw)
    return training.finetune(**args)


def interrupted(monkeypatch, at_step: int, run) -> None:
    """Call ``run()`` with a KeyboardInterrupt raised at training step ``at_step`` (then undone)."""
    real = loop.check_finite

    def interrupt(loss, step, epoch=None):
        if step == at_step:
            raise KeyboardInterrupt
        return real(loss, step, epoch)

    monkeypatch.setattr(loop, "check_finite", interrupt)
    try:
        with pytest.raises(KeyboardInterrupt):
            run()
    finally:
        monkeypatch.setattr(loop, "check_finite", real)

"""BatchNorm statistics recomputed for a module's current weights ("precise BN"), then put back.

In training mode BatchNorm normalises with each batch's own statistics and keeps running
averages for evaluation; those averages lag the weights (or, for a freshly built network, are
still the defaults: mean 0, variance 1). Anything that evaluates a network — validation, a
probe, a k-NN — should therefore first recompute the statistics for the weights as they are:
:func:`recomputed_bn` runs forward passes in training mode without gradients, with a cumulative
average over the given batches (``momentum=None``), switches the module to eval mode for the
block, and restores the running statistics, momenta and train/eval mode on leaving, so whatever
called it continues exactly as before (Wu & Johnson, "Rethinking 'Batch' in BatchNorm", 2021).
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from contextlib import contextmanager

import torch
from torch import nn

__all__ = ["batchnorm_layers", "recomputed_bn"]


def batchnorm_layers(module: nn.Module) -> list[nn.Module]:
    """The BatchNorm layers of ``module`` that keep running statistics."""
    return [m for m in module.modules() if isinstance(m, nn.modules.batchnorm._BatchNorm) and m.track_running_stats]


@contextmanager
def recomputed_bn(module: nn.Module, batches: Iterable[torch.Tensor], forward: Callable | None = None):
    """Inside the block ``module`` is in eval mode with BatchNorm statistics recomputed on ``batches``.

    Args:
        module: the network whose BatchNorm layers are recomputed (and set to eval mode).
        batches: input tensors (each a batch); consumed once, in order. Empty: nothing is
            recomputed (the block only switches to eval mode).
        forward: what to call on each batch (default ``module``); e.g. an SSL method's ``embed``
            when ``module`` is its encoder and the method transforms its input first.

    On leaving, every BatchNorm's running mean, variance, batch count and momentum are restored
    and ``module`` returns to the train/eval mode it had.
    """
    bns = batchnorm_layers(module)
    was = module.training
    saved = [(m.running_mean.clone(), m.running_var.clone(), m.num_batches_tracked.clone(), m.momentum) for m in bns]
    call = forward or module
    try:
        if bns:
            seen = False
            for x in batches:
                if not seen:
                    for m in bns:
                        m.reset_running_stats()
                        m.momentum = None  # cumulative average over the recalibration batches
                    module.train()
                    seen = True
                with torch.no_grad():
                    call(x)
        module.eval()
        yield module
    finally:
        for m, (mean, var, count, momentum) in zip(bns, saved):
            m.running_mean.copy_(mean)
            m.running_var.copy_(var)
            m.num_batches_tracked.copy_(count)
            m.momentum = momentum
        module.train(was)

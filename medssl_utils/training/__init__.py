"""Pretraining and fine-tuning loops on lightning Fabric (CPU, one GPU, several GPUs).

Both loops write a run directory (docs/run-format.md) and can be interrupted and resumed:
everything random is a pure function of ``(seed, step)`` — which slices form a batch
(:func:`stream_batch`), how they are augmented (a generator seeded per step) and the learning
rate (:func:`lr_at`) — and ``checkpoints/last.pt`` holds model and optimiser state. A run
resumed from ``last.pt`` therefore reaches exactly the result of an uninterrupted run on CPU.
A finished run (``result.json`` status ``complete``) is returned as is, never re-trained,
unless ``overwrite=True``.

Pretraining (``pretrain``): BYOL, SimCLR or HSSL on the unlabelled pool of one or several
datasets (slices of training patients only — test and validation patients never enter it),
two views per slice from :class:`~medssl_utils.data.SSLAugment`, optimiser LARS (BYOL's
recipe: lr = 0.2 × batch/256, no weight decay or adaptation on biases and norms), SGD or
AdamW with warm-up + cosine decay, BYOL's target momentum 0.99 → 1 (cosine). An online
k-NN probe (slice position base/mid/apex for one dataset, task for several) tracks whether
the representation improves. Checkpoints at ``save_epochs`` and at the end are medssl
checkpoints carrying their lineage.

Fine-tuning (``finetune``): a U-Net whose encoder starts from ``init`` (decoder random,
unless the checkpoint pretrained one), Adam with warm-up + cosine (Work A: lr 1e-4), joint
image/mask augmentation, Dice+CE or Jaccard loss, validation Dice every ``eval_every``
steps; at the end every test volume is predicted slice by slice, mapped back onto its
original voxel grid and scored per structure (Dice, HD, HD95 in mm; per-slice IoU); the
predictions are written as NIfTI with the original affine and ACDC naming.

Several processes (``devices=N``, DDP; gloo on CPU, NCCL on GPUs): ``batch_size`` is per
process, so one step sees N × batch_size slices — process r takes its own share of the same
seeded global batch — and an epoch has N times fewer steps. Fabric starts the extra processes
by re-running the calling script, so multi-process runs start from a script, not a notebook.
Rank 0 alone writes the run directory; rank 0 prepares the data first and the others then
read its caches; logged losses are means over the processes; at the end the processes
compare their weights and the run fails if they differ.

Layout: :mod:`.config` (the two parameter sets), :mod:`.loop` (what both loops share: Fabric,
the seeded batch stream, schedules, optimisers, run directories, resume state, checks),
:mod:`.pretrain`, :mod:`.finetune` (each loop top to bottom) and :mod:`.evaluate`
(validation Dice, whole-volume prediction, test metrics).
"""

from medssl_utils.training.config import (
    DEVICES,
    LOSSES,
    METHODS,
    OPTIMIZERS,
    PRECISIONS,
    RECIPES,
    SPLITS,
    FinetuneConfig,
    PretrainConfig,
    TrainingError,
)
from medssl_utils.training.evaluate import predict_volume
from medssl_utils.training.finetune import FinetuneData, check_no_leakage, finetune, prepare_finetune_data
from medssl_utils.training.loop import (
    StreamBatchSampler,
    load_run,
    lr_at,
    make_fabric,
    make_optimizer,
    stream_batch,
)
from medssl_utils.training.pretrain import PretrainData, prepare_pretrain_data, pretrain, ssl_augment
from medssl_utils.training.probe import ProbeData, dense_probe, prepare_probe_data

__all__ = [
    "DEVICES", "LOSSES", "METHODS", "OPTIMIZERS", "PRECISIONS", "SPLITS", "FinetuneConfig", "FinetuneData",
    "PretrainConfig", "PretrainData", "StreamBatchSampler", "TrainingError", "check_no_leakage", "finetune",
    "load_run", "lr_at", "make_fabric", "make_optimizer", "predict_volume", "prepare_finetune_data",
    "prepare_pretrain_data", "pretrain", "stream_batch", "ssl_augment", "ProbeData", "dense_probe",
    "prepare_probe_data", "RECIPES",
]

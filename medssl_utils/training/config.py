"""Parameters of a pretraining run and of a fine-tuning run, checked when they are made."""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field

from medssl_utils.data.specs import check_spec, check_specs
from medssl_utils.data.transforms import SSL_PRESETS, check_augment, ssl_preset
from medssl_utils.errors import MedsslError, ParameterError, check_choice
from medssl_utils.models.init_spec import check_init
from medssl_utils.models.methods import METHODS as SSL_METHODS
from medssl_utils.models.methods import method_class
from medssl_utils.models.unet import check_decoder_channels, check_encoder_name
from medssl_utils.training.tracking import check_trackers
from medssl_utils.validate import check_field_types, check_int, check_keywords, check_number

METHODS = tuple(SSL_METHODS)  # models.methods: the table of SSL methods
OPTIMIZERS = ("lars", "sgd", "adamw", "adam")
DEVICES = ("auto", "cpu", "cuda")
PRECISIONS = {"32": "32-true", "32-true": "32-true", "bf16-mixed": "bf16-mixed", "16-mixed": "16-mixed"}
SPLITS = ("auto", "paper", "random", "official")
LOSSES = ("dice_ce", "jaccard")
INPUT_NORMS = ("volume", "image")
#: Named fine-tuning settings: the values a recipe gives ``lr``, ``warmup_steps``, ``grad_clip`` and
#: ``loss`` when they are left None (explicit values win). ``warmup`` is a fraction of ``max_steps``
#: as (numerator, denominator), rounded down;
#: ``warmup_start_lr`` None means medssl's warm-up from ``lr / warmup``.
RECIPES = {
    # medssl's CPU setting (benchmarks/finetune_settings.py): Adam 1e-2, 5 % warm-up, cosine, Dice + CE
    "medssl": {"lr": 1e-2, "warmup": (1, 20), "warmup_start_lr": None, "grad_clip": 0.0, "loss": "dice_ce"},
    # Work A (SSL-MedSeg supervised_segmentation/config_acdc.yaml): Adam 1e-4, 10 of 150 epochs of linear
    # warm-up from 1e-6, cosine, gradient clipping 5, Jaccard loss
    "work-a": {"lr": 1e-4, "warmup": (1, 15), "warmup_start_lr": 1e-6, "grad_clip": 5.0, "loss": "jaccard"},
}
# parameters that do not change what a run computes (may differ when resuming)
_RUNTIME_KEYS = {"device", "progress", "num_workers", "overwrite", "run_dir", "log_every", "devices", "trackers"}


class TrainingError(MedsslError):
    """Training cannot go on (e.g. the loss became NaN)."""


# ----------------------------------------------------------------------------- configuration
@dataclass
class _Common:
    # The defaults of the notebooks (01_pretrain, 02_finetune): their parameters cells hold these
    # values, value for value (params.cell_disagreements; tested), run_dir excepted (NOTEBOOK_DEFAULTS)
    encoder: str = "tf_efficientnet_lite0"  # has supervised ImageNet weights offline (init="imagenet")
    image_size: int = 64
    batch_size: int = 32
    lr: float | None = None
    seed: int = 0
    device: str = "auto"
    devices: int = 1
    precision: str | int = "32"  # YAML's unquoted 32 is the int 32
    channels_last: bool = True  # fastest on CPU and GPU (benchmarks/train_throughput.py)
    decoder_channels: tuple[int, ...] = (64, 32, 16, 16, 16)
    split: str = "auto"
    split_seed: int = 0
    grad_clip: float = 0.0
    num_workers: int = 0
    log_every: int = 10
    progress: bool | str = "auto"
    overwrite: bool = False
    run_dir: str | os.PathLike | None = None
    # the same curves to TensorBoard / W&B (offline) too; history.csv stays the record (training.tracking)
    trackers: tuple[str, ...] = ()

    def _check_common(self) -> None:
        check_field_types(self)  # each field's annotation: the declaration of the notebooks' parameters
        check_encoder_name(self.encoder)
        check_int("image_size", self.image_size, 32, 2048)
        if self.image_size % 32:
            raise ParameterError(f"image_size={self.image_size}: expected a multiple of 32 "
                                 "(the U-Net halves it 5 times)")
        check_int("batch_size", self.batch_size, 2, 65536)
        check_int("seed", self.seed, 0)
        check_int("split_seed", self.split_seed, 0)
        check_int("devices", self.devices, 1, 1024)
        check_int("num_workers", self.num_workers, 0, 256)
        check_int("log_every", self.log_every, 1)
        check_choice("device", self.device, DEVICES)
        check_choice("precision", str(self.precision), PRECISIONS)
        check_choice("split", self.split, SPLITS)
        check_choice("progress", self.progress, (True, False, "auto"))
        if self.lr is not None:
            check_number("lr", self.lr, 0, None, low_open=True,
                         what="a positive finite number or None (method default)")
        if self.grad_clip is not None:  # fine-tuning: None is the recipe's
            check_number("grad_clip", self.grad_clip, 0, None, what="a finite number >= 0 (0 disables clipping)")
        self.decoder_channels = check_decoder_channels(self.decoder_channels)
        self.trackers = check_trackers(self.trackers)
        if self.run_dir is None or not str(self.run_dir).strip():
            raise ParameterError("run_dir: expected a folder for this run's outputs")

    def as_params(self) -> dict:
        d = dataclasses.asdict(self)
        d["decoder_channels"] = list(self.decoder_channels)
        d["trackers"] = list(self.trackers)
        return d


@dataclass
class PretrainConfig(_Common):
    """Parameters of one self-supervised pretraining run (``notebooks/01_pretrain.ipynb``)."""

    method: str = "byol"
    datasets: list[str] = field(default_factory=lambda: ["phantom:cardiac?cases=32"])
    init: str | os.PathLike = "random"
    epochs: int = 3
    max_steps: int | None = None
    optimizer: str = "adamw"  # LARS's large-batch recipe learns little in a few hundred steps of batch 32
    weight_decay: float | None = None
    warmup_epochs: float | None = None  # None: 1 epoch, at most 10 % of the run
    save_epochs: list[int] = field(default_factory=lambda: [1])
    balanced: bool = True
    method_options: dict = field(default_factory=lambda: {"hidden_dim": 1024, "projection_dim": 128})
    # a named SSLAugment setting (data.transforms.SSL_PRESETS: medssl, byol, work-a); `augment` overrides it
    augment_preset: str = "medssl"
    augment: dict = field(default_factory=dict)
    # the dense linear probe (training.probe) of the encoder on each labelled dataset of the pool:
    # at step 0, every `probe_every` epochs, at every saved epoch and at the end (0: off), over
    # `probe_seeds` draws of `probe_slices` labelled training slices, scored on `probe_val_slices`
    probe_every: int = 1
    probe_seeds: int = 3
    probe_slices: int = 96
    probe_val_slices: int = 64
    probe_steps: int = 100
    knn_every: int = 0
    knn_max_bank: int = 2000
    knn_max_query: int = 500

    def __post_init__(self):
        self._check_common()
        check_choice("method", self.method, METHODS)
        check_choice("optimizer", self.optimizer, OPTIMIZERS)
        self.datasets = [str(s) for s in check_specs("datasets", self.datasets)]
        check_int("epochs", self.epochs, 1)
        if self.max_steps is not None:
            check_int("max_steps", self.max_steps, 1)
        check_int("knn_every", self.knn_every, 0)
        check_int("probe_every", self.probe_every, 0)
        check_int("probe_seeds", self.probe_seeds, 1, 100)
        check_int("probe_slices", self.probe_slices, 1)
        check_int("probe_val_slices", self.probe_val_slices, 1)
        check_int("probe_steps", self.probe_steps, 1)
        check_choice("augment_preset", self.augment_preset, tuple(SSL_PRESETS))
        check_int("knn_max_bank", self.knn_max_bank, 1)
        check_int("knn_max_query", self.knn_max_query, 1)
        for e in self.save_epochs:
            check_int("save_epochs[...]", e, 1, self.epochs)
        self.save_epochs = sorted(set(int(e) for e in self.save_epochs))
        if self.weight_decay is not None:
            check_number("weight_decay", self.weight_decay, 0)
        if self.warmup_epochs is not None:
            check_number("warmup_epochs", self.warmup_epochs, 0, self.epochs,
                         what="None (1 epoch, at most 10 % of the run) or a number of epochs in "
                              f"0..epochs ({self.epochs})")
        self.method_options = check_keywords("method_options", self.method_options, method_class(self.method),
                                             what=f"{self.method}'s constructor")
        base = {**ssl_preset(self.augment_preset, self.image_size), **method_class(self.method).augment}
        self.augment = check_augment(self.augment, "SSLAugment", self.image_size, base)
        check_init(self.init)


@dataclass
class FinetuneConfig(_Common):
    """Parameters of one fine-tuning run (``notebooks/02_finetune.ipynb``)."""

    dataset: str = "phantom:cardiac?cases=32"  # the quick study's data: 24 train / 4 val / 4 test patients
    init: str | os.PathLike = "random"
    labelled_slices: int | None = 30  # exactly one of the two is given (the other None)
    labelled_fraction: float | None = None
    max_steps: int = 500
    eval_every: int = 50
    batch_size: int = 8
    # a named setting (RECIPES) that fills lr, warmup_steps, grad_clip and loss where they are None
    recipe: str = "medssl"
    warmup_steps: int | None = None
    grad_clip: float | None = None
    loss: str | None = None
    # the encoder's learning rate as a multiple of the decoder's (the schedule's lr)
    encoder_lr_scale: float = 1.0
    # steps at the start during which only the decoder (and head) is trained, on a frozen encoder
    freeze_encoder_steps: int = 0
    # "volume": slices as the slice cache normalised them (per volume); "image": each slice z-scored
    # by itself at the model's input (what HSSL pretraining with standardize=True feeds its encoder)
    input_norm: str = "volume"
    load_decoder: bool | str = "auto"
    augment: dict = field(default_factory=dict)
    save_predictions: bool = True
    eval_batch_size: int = 64
    # training slices on which BatchNorm statistics are recomputed before every evaluation
    # (validation and test); 0 evaluates with the running statistics (see training.evaluate)
    recalibrate_bn: int = 64
    # the dense linear probe of the starting encoder (training.probe), before any fine-tuning step
    probe_init: bool = True
    probe_slices: int = 96
    probe_val_slices: int = 64
    probe_steps: int = 100

    def __post_init__(self):
        self._check_common()
        self.dataset = str(check_spec("dataset", self.dataset))
        check_int("max_steps", self.max_steps, 1)
        check_int("eval_every", self.eval_every, 1)
        check_int("eval_batch_size", self.eval_batch_size, 1)
        check_int("recalibrate_bn", self.recalibrate_bn, 0)
        check_choice("recipe", self.recipe, tuple(RECIPES))
        if self.warmup_steps is not None:
            check_int("warmup_steps", self.warmup_steps, 0, self.max_steps)
        if self.grad_clip is not None:
            check_number("grad_clip", self.grad_clip, 0, None,
                         what="a finite number >= 0 (0 disables clipping) or None (the recipe's)")
        if self.loss is not None:
            check_choice("loss", self.loss, LOSSES)
        check_number("encoder_lr_scale", self.encoder_lr_scale, 0, 100, low_open=True,
                     what="a number in (0, 100]: the encoder's learning rate as a multiple of the decoder's")
        check_int("freeze_encoder_steps", self.freeze_encoder_steps, 0, self.max_steps)
        check_choice("input_norm", self.input_norm, INPUT_NORMS)
        check_choice("load_decoder", self.load_decoder, ("auto", True, False))
        check_int("probe_slices", self.probe_slices, 1)
        check_int("probe_val_slices", self.probe_val_slices, 1)
        check_int("probe_steps", self.probe_steps, 1)
        if (self.labelled_slices is None) == (self.labelled_fraction is None):
            raise ParameterError("give exactly one of labelled_slices (a number of slices) or labelled_fraction "
                                 f"(a fraction of training patients); got labelled_slices={self.labelled_slices!r}, "
                                 f"labelled_fraction={self.labelled_fraction!r}")
        if self.labelled_slices is not None:
            check_int("labelled_slices", self.labelled_slices, 1)
        elif not (isinstance(self.labelled_fraction, (int, float)) and 0 < self.labelled_fraction <= 1):
            raise ParameterError(f"labelled_fraction={self.labelled_fraction!r}: expected 0 < fraction <= 1")
        self.augment = check_augment(self.augment, "SegAugment", self.image_size)
        check_init(self.init, self.load_decoder is True)

    def schedule(self) -> dict:
        """The resolved schedule: the recipe's values where the run left them None (explicit values win).

        ``{"recipe", "lr", "warmup_steps", "warmup_start_lr", "grad_clip", "loss", "encoder_lr_scale",
        "freeze_encoder_steps"}``.
        """
        r = RECIPES[self.recipe]
        return {"recipe": self.recipe, "lr": float(self.lr if self.lr is not None else r["lr"]),
                "warmup_steps": int(self.warmup_steps if self.warmup_steps is not None
                                    else self.max_steps * r["warmup"][0] // r["warmup"][1]),
                "warmup_start_lr": r["warmup_start_lr"],
                "grad_clip": float(self.grad_clip if self.grad_clip is not None else r["grad_clip"]),
                "loss": self.loss if self.loss is not None else r["loss"],
                "encoder_lr_scale": float(self.encoder_lr_scale),
                "freeze_encoder_steps": int(self.freeze_encoder_steps)}

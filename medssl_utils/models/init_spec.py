"""``init`` values: what a string such as ``"random"``, ``"imagenet"`` or ``"file:PATH"`` means, checked
before any model is built (:func:`check_init`). The values are described in :mod:`medssl_utils.models.init`."""

from __future__ import annotations

import os
from pathlib import Path


from medssl_utils.errors import DataError, ParameterError
from medssl_utils.validate import check_bool



_WEIGHT_SUFFIXES = (".pt", ".pth", ".ckpt", ".tar", ".bin", ".safetensors")


# ----------------------------------------------------------------------------- init strings
def parse_init(init: str | os.PathLike) -> tuple[str, Path | None]:
    """Split an ``init`` value into ``("random" | "timm" | "path", path_or_None)``.

    Raises :class:`ParameterError` for anything that is neither a keyword nor looks like a path.
    """
    if isinstance(init, os.PathLike):
        return "path", Path(init).expanduser()
    if not isinstance(init, str) or not init.strip():
        raise ParameterError(f"init={init!r}: {_INIT_CHOICES}")
    text = init.strip()
    low = text.lower()
    if low in ("random", "timm"):
        return low, None
    if low == "imagenet":
        return "timm", None
    if low.startswith("file:"):
        if not text[5:].strip():
            raise ParameterError(f"init={init!r}: 'file:' must be followed by the path of a weights file")
        return "path", Path(text[5:].strip()).expanduser()
    if ("/" in text or os.sep in text or text.startswith(("~", ".")) or low.endswith(_WEIGHT_SUFFIXES)
            or Path(text).exists()):
        return "path", Path(text).expanduser()
    raise ParameterError(f"init={init!r} is not recognised; {_INIT_CHOICES}")


def check_init(init: str | os.PathLike, load_decoder: bool = False) -> tuple[str, Path | None]:
    """:func:`parse_init` plus the checks that need no model: the file exists, and
    ``load_decoder=True`` comes with a checkpoint path. Lets factories fail before building."""
    kind, path = parse_init(init)
    check_bool("load_decoder", load_decoder)
    if load_decoder and kind != "path":
        raise ParameterError(f"load_decoder=True needs init to be a medssl checkpoint holding a "
                             f"pretrained decoder, not init={init!r}")
    if path is not None and not path.exists():
        raise DataError(f"weights file {path} does not exist (init={str(init)!r})")
    if path is not None and path.is_dir():
        raise DataError(f"init={str(init)!r}: {path} is a folder, not a weights file (give the file in it)")
    return kind, path


_INIT_CHOICES = ("expected 'random', 'timm' or 'imagenet' (the encoder's timm pretrained weights, e.g. ImageNet), "
                 "'file:PATH' (a torchvision/timm/solo-learn/lightly/BYOL-PyTorch checkpoint) or the "
                 "path of a medssl checkpoint")

"""The self-supervised methods by name: one table, resolved on use.

``METHODS`` maps a method's name (``PretrainConfig.method``, the notebooks' ``method``) to the
module and class that implement it; the class mixes in
:class:`~medssl_utils.models.ssl_common.SSLMethod`, which lists what the pretraining loop asks of a
method. Adding a method is one module with its class plus one entry here::

    # medssl_utils/models/mymethod.py
    class MyMethod(SSLMethod, nn.Module):
        def __init__(self, encoder, feature_dim, temperature: float = 0.1): ...
        def forward(self, view1, view2): return loss, {"loss": loss}

    METHODS["mymethod"] = ("medssl_utils.models.mymethod", "MyMethod")

Its constructor's keyword arguments are the run's ``method_options`` (checked by name and type
before the run starts).
"""

from __future__ import annotations

import importlib

from medssl_utils.errors import ParameterError

#: name -> (module, class)
METHODS: dict[str, tuple[str, str]] = {
    "byol": ("medssl_utils.models.byol", "BYOL"),
    "simclr": ("medssl_utils.models.simclr", "SimCLR"),
    "hssl": ("medssl_utils.models.hssl", "HSSL"),
}


def method_class(name: str) -> type:
    """The class of method ``name`` (imported here: the methods import torch and lightly)."""
    if name not in METHODS:
        raise ParameterError(f"method={name!r}: expected one of {list(METHODS)}")
    module, cls = METHODS[name]
    return getattr(importlib.import_module(module), cls)

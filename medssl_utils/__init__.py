"""medssl: a study of self-supervised pretraining for 2D medical image segmentation.

The package is deliberately thin: ``medssl_utils.data`` turns NIfTI datasets (real ACDC /
Medical Segmentation Decathlon downloads, or phantoms it writes itself) into 2D training
batches; the notebooks in ``notebooks/`` run the experiments.
"""

from medssl_utils.errors import DataError, MedsslError, ParameterError

__version__ = "0.1.0"

__all__ = ["DataError", "MedsslError", "ParameterError", "__version__"]

"""Deep Convolutional Gaussian Mixture Models as Pyro programs.

The scikit-learn-style estimators :class:`DCGMM` and :class:`DCGMMClassifier` (and with them
scikit-learn and the trainer) are imported on first use, so ``import pyro_dcgmm`` stays light.
"""

from pyro_dcgmm.model.annealing import AnnealingSchedule, torus_neighbourhood
from pyro_dcgmm.model.fold import Fold
from pyro_dcgmm.model.gmm import GMM
from pyro_dcgmm.model.joint import JointStack
from pyro_dcgmm.model.pool import MaxPool
from pyro_dcgmm.model.readout import Readout
from pyro_dcgmm.model.stack import MAX_PLATE_NESTING, Stack

__version__ = "0.1.0"


def __getattr__(name: str):
    """The estimators, imported on first use and kept as attributes from then on."""
    if name == "DCGMM":
        from pyro_dcgmm.estimator import DCGMM as estimator
    elif name == "DCGMMClassifier":
        from pyro_dcgmm.class_models import DCGMMClassifier as estimator
    else:
        raise AttributeError(f"module 'pyro_dcgmm' has no attribute {name!r}")
    globals()[name] = estimator
    return estimator


__all__ = [
    "DCGMM",
    "GMM",
    "MAX_PLATE_NESTING",
    "AnnealingSchedule",
    "DCGMMClassifier",
    "Fold",
    "JointStack",
    "MaxPool",
    "Readout",
    "Stack",
    "torus_neighbourhood",
]

"""Deep Convolutional Gaussian Mixture Models as Pyro programs."""

from pyro_dcgmm.annealing import AnnealingSchedule, torus_neighbourhood
from pyro_dcgmm.estimator import DCGMM
from pyro_dcgmm.fold import Fold
from pyro_dcgmm.gmm import GMM
from pyro_dcgmm.pool import MaxPool
from pyro_dcgmm.readout import Readout
from pyro_dcgmm.stack import MAX_PLATE_NESTING, Stack

__version__ = "0.1.0"

__all__ = [
    "DCGMM",
    "GMM",
    "MAX_PLATE_NESTING",
    "AnnealingSchedule",
    "Fold",
    "MaxPool",
    "Readout",
    "Stack",
    "torus_neighbourhood",
]

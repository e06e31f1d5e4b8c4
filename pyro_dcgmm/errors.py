"""Exceptions raised by :mod:`pyro_dcgmm`.

Every error a user can cause derives from :class:`ValueError`, so ``except ValueError`` catches
bad input of any kind, while the subclasses let callers tell the source apart.
"""


class ConfigError(ValueError):
    """A configuration (TOML file, dictionary or keyword arguments) is invalid."""


class ArchitectureError(ValueError):
    """A layer stack cannot be built for the given input shape."""


class LayerConfigError(ConfigError, ArchitectureError):
    """A layer's options are invalid: a configuration error that also means no stack can be built."""


class LayerIndexError(IndexError, ArchitectureError):
    """A layer number the stack does not have: an ``IndexError`` as Python's indexing raises, and
    an :class:`ArchitectureError`, so the commands report it in one line."""


class DataError(ValueError):
    """Input data (arrays, IDX files, downloads) are malformed or out of range."""


class CheckpointError(ValueError):
    """A checkpoint is missing, truncated or does not match the model."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN or infinite loss."""


class TrainingInterrupted(KeyboardInterrupt):
    """Training stopped at a Ctrl-C (SIGINT) after its current step; the message says where it
    stood and how to resume from the checkpoint it saved (if it writes checkpoints)."""


class TrainingWarning(UserWarning):
    """A finished run shows a sign that it did not learn (see :mod:`pyro_dcgmm.training.diagnostics`)."""

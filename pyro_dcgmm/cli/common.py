"""What the ``pyro-dcgmm`` sub-commands share: a parser that shows defaults, the flags several
take, and how a command ends on a user's error."""

from __future__ import annotations

import argparse
import re
import sys
import typing
from collections.abc import Callable
from pathlib import Path

from pyro_dcgmm.config import DataConfig, TrainConfig
from pyro_dcgmm.config.run import NAMED_DATASETS
from pyro_dcgmm.device import float32_precision
from pyro_dcgmm.errors import ArchitectureError, CheckpointError, ConfigError, DataError, NonFiniteLossError
from pyro_dcgmm.training.files import writing_into

USER_ERRORS = (ConfigError, ArchitectureError, DataError, CheckpointError, NonFiniteLossError)
DEVICES = typing.get_args(typing.get_type_hints(TrainConfig)["device"])
OPTIMIZERS = typing.get_args(typing.get_type_hints(TrainConfig)["optimizer"])


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Shows a flag's default where it has one that its help does not already state, and keeps the
    description's and the epilog's lines as written."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (
            any(action.default is nothing for nothing in (None, argparse.SUPPRESS, False))
            or "default" in text
        ):
            return text
        return f"{text} (default: %(default)s)"


def plain(text: str) -> str:
    """Docstring markup as a terminal shows it: ``code`` as code, :role:`~a.b.Name` as Name."""
    text = re.sub(r":\w+:`~?(?:[\w.]+\.)?([\w]+)`", r"\1", text)
    return text.replace("``", "").replace("::\n", ":\n")


def make_parser(doc: str, parser_class=argparse.ArgumentParser, **options) -> argparse.ArgumentParser:
    """A parser described by the first paragraph of ``doc``, with defaults shown and the rest of
    ``doc`` (its examples) as epilog, markup removed; abbreviated flags are errors.
    ``parser_class`` and ``options`` (e.g. ``prog``) serve sub-command parsers."""
    first, _, rest = plain(doc).partition("\n\n")
    return parser_class(
        description=first.strip(),
        epilog=rest.strip() or None,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
        **options,
    )


def output_folder(path: Path) -> Path:
    """``path`` as an existing folder to write into (made if missing), or one line saying why not."""
    with writing_into(path, "--out"):
        path.mkdir(parents=True, exist_ok=True)
    return path


def positive_int(text: str) -> int:
    """An argparse type: a whole number of at least 1."""
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got {text}")
    return value


def add_data_flags(parser: argparse.ArgumentParser, default: str | None = "digits") -> None:
    """``--dataset``, ``--patch-size`` and ``--root``."""
    parser.add_argument(
        "--dataset",
        default=default,
        help=f"data set: {', '.join(NAMED_DATASETS)}, or your own images: a .npy or .npz file or a folder",
    )
    parser.add_argument(
        "--patch-size",
        type=int,
        default=None if default is None else DataConfig().patch_size,
        help="side of the natural-image patches (--dataset natural-patches)",
    )
    parser.add_argument("--root", help="folder with the data set's IDX files (none: its usual place)")


def add_device_flag(parser: argparse.ArgumentParser, default: str | None = TrainConfig.device) -> None:
    """``--device``: ``auto`` takes CUDA when it is available."""
    parser.add_argument("--device", default=default, choices=DEVICES, help="where to compute")


def batch_size(text: str) -> int | str:
    """``--batch-size``: a positive int, or ``auto``."""
    return "auto" if text == "auto" else positive_int(text)


def add_training_flags(parser: argparse.ArgumentParser, with_defaults: bool = False) -> None:
    """``--epochs``, ``--batch-size``, ``--lr``, ``--optimizer`` and ``--seed``, defaulting to
    :class:`~pyro_dcgmm.config.TrainConfig`'s defaults ``with_defaults``, else to ``None`` (the
    run's configuration decides)."""
    defaults = TrainConfig() if with_defaults else None

    def default(name: str):
        return None if defaults is None else getattr(defaults, name)

    parser.add_argument("-n", "--epochs", type=int, default=default("epochs"), help="passes over the data")
    parser.add_argument(
        "-b",
        "--batch-size",
        type=batch_size,
        default=default("batch_size"),
        help="mini-batch size, or auto (100 on a CPU, 1024 on a GPU)",
    )
    parser.add_argument("--lr", type=float, default=default("lr"), help="learning rate of Adam and SGD")
    parser.add_argument("--optimizer", default=default("optimizer"), choices=OPTIMIZERS, help="optimiser")
    parser.add_argument("--seed", type=int, default=default("seed"), help="seed of all randomness")


def format_table(rows: list[list[str]]) -> str:
    """Rows of strings (the first one the header) as right-aligned columns."""
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return "\n".join("  ".join(c.rjust(w) for c, w in zip(row, widths, strict=True)) for row in rows)


def run_script(main: Callable[[], object], name: str | None = None) -> None:
    """Run a command's ``main`` in full float32 precision on CUDA (training takes its
    ``training.tf32``, :func:`~pyro_dcgmm.device.float32_precision`).  What a user can cause (a bad
    setting or file, data that do not fit, training that diverged) ends it with one line on stderr
    and exit code 2; Ctrl-C with the line that says how to resume and exit code 130.  Anything else
    is a bug and keeps its traceback."""
    name = name or Path(sys.argv[0]).name
    try:
        with float32_precision(tf32=False):
            main()
    except USER_ERRORS as error:
        print(f"{name}: error: {error}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt as interrupt:
        print(f"{name}: {interrupt or 'interrupted'}", file=sys.stderr)
        sys.exit(130)

"""What the command-line scripts share: a parser that shows defaults, and the data-set flags."""

from __future__ import annotations

import argparse

DATASETS = ("digits", "fashion-mnist", "mnist")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Shows every flag's default and keeps the epilog's examples as written."""


def make_parser(doc: str) -> argparse.ArgumentParser:
    """A parser described by the first line of ``doc``, with defaults shown and the rest of ``doc``
    (its examples) as epilog; abbreviated flags are errors."""
    first, _, rest = doc.partition("\n")
    return argparse.ArgumentParser(
        description=first,
        epilog=rest.strip() or None,
        formatter_class=HelpFormatter,
        allow_abbrev=False,
    )


def add_data_flags(parser: argparse.ArgumentParser, default: str = "digits") -> None:
    """``--dataset`` and ``--root``."""
    parser.add_argument("--dataset", default=default, choices=DATASETS, help="data set")
    parser.add_argument("--root", help="folder with the data set's IDX files (none: its usual place)")

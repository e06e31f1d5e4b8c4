"""``python -m pyro_dcgmm COMMAND ...``: the same as the ``pyro-dcgmm`` command."""

from pyro_dcgmm.cli.main import main

main()

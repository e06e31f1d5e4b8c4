"""The ``pyro-dcgmm`` sub-commands, one module each with ``main(argv)`` (see :mod:`pyro_dcgmm.cli.common`)."""

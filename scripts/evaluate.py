"""``pyro-dcgmm evaluate`` as a script, for a checkout without the package installed as a command."""

from pyro_dcgmm.cli.common import run_script
from pyro_dcgmm.cli.evaluate import main

if __name__ == "__main__":
    run_script(main)

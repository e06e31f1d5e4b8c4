"""``pyro-dcgmm bench`` as a script, for a checkout without the package installed as a command."""

from pyro_dcgmm.cli.bench import main
from pyro_dcgmm.cli.common import run_script

if __name__ == "__main__":
    run_script(main)

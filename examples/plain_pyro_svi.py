"""A stack trained by plain Pyro: SVI with TraceEnum_ELBO and a pyro.optim optimiser, then
Predictive drawing every layer's components and patches from the stack's generative program.

    python examples/plain_pyro_svi.py --steps 200
"""

import argparse

import pyro
from pyro.infer import SVI, Predictive, TraceEnum_ELBO

from pyro_dcgmm import GMM, Fold, Stack
from pyro_dcgmm.data.datasets import load_digits

parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
parser.add_argument("--steps", type=int, default=200)
args = parser.parse_args()

data = load_digits()
pyro.set_rng_seed(0)
stack = Stack([Fold(4, stride=2), GMM(25, init="random"), Fold(None), GMM(10, init="random")], (1, 8, 8))
elbo = TraceEnum_ELBO(max_plate_nesting=stack.max_plate_nesting)
svi = SVI(stack.model, stack.guide, pyro.optim.Adam({"lr": 0.01}), elbo)
for step in range(args.steps):
    loss = svi.step(data.train_images[:500])
    stack.project_()  # precisions back inside their bounds after every step
    if step % max(1, args.steps // 5) == 0:
        print(f"step {step}: loss {loss / 500:.1f} nats per image")
print("test log-likelihood per GMM layer:", stack.layer_log_probs(data.test_images).mean(0).tolist())
draws = Predictive(stack.sample, num_samples=2)(4)
print({name: tuple(value.shape) for name, value in draws.items()})

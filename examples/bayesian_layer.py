"""A Bayesian GMM layer: Dirichlet and Normal-Gamma priors on 100 training digits, fitted by MAP-EM
beside maximum likelihood, then the same priors trained by plain Pyro SVI with a mean-field
Dirichlet guide on the weights.

    python examples/bayesian_layer.py --epochs 50 --steps 200
"""

import argparse

import pyro
from pyro.infer import SVI, TraceEnum_ELBO

from pyro_dcgmm import DCGMM
from pyro_dcgmm.data.datasets import load_digits
from pyro_dcgmm.inference.guides import mean_field_guide

parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
parser.add_argument("--epochs", type=int, default=50)
parser.add_argument("--steps", type=int, default=200)
args = parser.parse_args()

data = load_digits()
train, test = data.train_images[:100].flatten(1).numpy(), data.test_images.flatten(1).numpy()
options = {"n_components": 50, "covariance_type": "diag", "epochs": args.epochs, "random_state": 0}
priors = {"weight_concentration_prior": 1 / 50, "mean_precision_prior": 1.0}  # scikit-learn's defaults
for name, model in [
    ("maximum likelihood", DCGMM(**options)),
    ("MAP-EM with priors", DCGMM(**options, **priors)),
]:
    model.fit(train)
    used = int((model.weights_ > 1e-3).sum())
    print(f"{name}: {used} of 50 components used, test log-likelihood {model.score(test):.1f} nats per image")

stack = model.stack_  # the MAP model: refine it by variational Bayes on the weights, in plain Pyro
x = data.train_images[:100]
guide = mean_field_guide(stack, num_data=len(x))
svi = SVI(
    stack.model,
    guide,
    pyro.optim.Adam({"lr": 0.01}),
    TraceEnum_ELBO(max_plate_nesting=stack.max_plate_nesting),
)
for _ in range(args.steps):
    loss = svi.step(x)
stack.assign_point_values_(guide.median())  # posterior mean weights and MAP components into the layer
print(
    f"after {args.steps} SVI steps: negative ELBO {loss / len(x):.1f} nats per image, "
    f"test log-likelihood {stack.log_prob(data.test_images).mean():.1f}"
)

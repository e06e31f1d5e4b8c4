"""In-painting: fill in the right half of test digits by a joint stack's exact conditional mean.

python examples/inpainting.py --out inpainting.png
"""

import argparse

import torch

from pyro_dcgmm import DCGMM
from pyro_dcgmm.data.datasets import load_digits
from pyro_dcgmm.evaluation.sample_quality import FlatGMMInpainter
from pyro_dcgmm.figures.plots import save_image_grid

parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
parser.add_argument("--epochs", type=int, default=10)
parser.add_argument("--out", default="inpainting.png", help="figure: original, observed half, filled")
args = parser.parse_args()

data = load_digits()
stack = DCGMM("Jdigits", epochs=args.epochs, random_state=0).fit(data.train_images).stack_
x = data.test_images[:100]
mask = torch.ones_like(x, dtype=torch.bool)
mask[..., 4:] = False  # the right half is missing
filled = stack.conditional_mean(x, mask)  # E[x | observed pixels], exact
flat = FlatGMMInpainter(data.train_images, components=25, seed=0)
baseline = torch.as_tensor(flat.conditional_mean(x, mask), dtype=x.dtype).view_as(x)
for name, guess in (("joint stack", filled), ("flat GMM K=25", baseline)):
    print(f"{name}: mean squared error on the missing half {float(((guess - x)[~mask] ** 2).mean()):.4f}")
columns = [x[:8], torch.where(mask[:8], x[:8], 0.5), filled[:8], baseline[:8]]
save_image_grid(
    torch.stack(columns, 1).flatten(0, 1), args.out, 4, "original, observed, joint stack, flat GMM"
)
print(f"wrote {args.out}")

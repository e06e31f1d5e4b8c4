"""Outlier scores: train on every digit but one, then rank the test set by negative log-likelihood.

python examples/outlier_scores.py --held-out 0
"""

import argparse

from sklearn.metrics import roc_auc_score

from pyro_dcgmm import DCGMM
from pyro_dcgmm.data.datasets import load_digits

parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
parser.add_argument("--held-out", type=int, default=0, help="the digit left out of training: the outliers")
parser.add_argument("--epochs", type=int, default=10)
args = parser.parse_args()

data = load_digits()
inliers = data.train_images[data.train_labels != args.held_out]
model = DCGMM("Jdigits", epochs=args.epochs, random_state=0).fit(inliers)  # log p(x) of the whole image
scores = -model.score_samples(data.test_images)  # higher: more outlying
outlier = (data.test_labels == args.held_out).numpy()
print(f"AUROC of -log p(x) for held-out digit {args.held_out}: {roc_auc_score(outlier, scores):.3f}")

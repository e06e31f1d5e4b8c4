"""Cluster your own images: a folder of image files or a .npz archive, with scikit-learn's API.

python examples/cluster_your_images.py my_images/ --clusters 10
python examples/cluster_your_images.py                     # the digits, saved as a .npz first
"""

import argparse
import tempfile
from pathlib import Path

import numpy as np
from sklearn.datasets import load_digits
from sklearn.metrics import normalized_mutual_info_score

from pyro_dcgmm import DCGMM
from pyro_dcgmm.config import DataConfig
from pyro_dcgmm.data.datasets import load_dataset

parser = argparse.ArgumentParser(description=__doc__.partition("\n\n")[0])
parser.add_argument("images", nargs="?", help="a folder of images or a .npz/.npy file (none: the digits)")
parser.add_argument("--clusters", type=int, default=10)
parser.add_argument("--epochs", type=int, default=10)
args = parser.parse_args()

if args.images is None:  # your own data would be a folder of PNGs; here the digits as an archive
    digits = load_digits()
    args.images = str(Path(tempfile.mkdtemp()) / "digits.npz")
    np.savez(args.images, images=(digits.images * 15).astype(np.uint8), labels=digits.target)
data = load_dataset(DataConfig(dataset=args.images))
model = DCGMM(n_components=args.clusters, epochs=args.epochs, random_state=0).fit(data.train_images)
clusters = model.predict(data.test_images)
sizes = np.bincount(clusters)
print(f"{len(data.test_images)} test images in {np.count_nonzero(sizes)} clusters, sizes {sizes}")
if len(data.class_names) > 1:
    print(f"NMI with the labels: {normalized_mutual_info_score(data.test_labels, clusters):.3f}")

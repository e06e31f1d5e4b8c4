import json

import numpy as np
import pytest

from pyro_dcgmm import presets
from pyro_dcgmm.cli import evaluate
from pyro_dcgmm.errors import DataError
from pyro_dcgmm.evaluation.metrics import bits_per_dimension, clustering_metrics, outlier_metrics
from pyro_dcgmm.evaluation.protocol import preset_layers

COMMON = [
    "--dataset",
    "digits",
    "--epochs",
    "1",
    "--lr",
    "0.03",
    "--device",
    "cpu",
    "--train-limit",
    "400",
    "--no-progress",
]


def test_outliers_all_folds(tmp_path):
    report = evaluate.main(["outliers", *COMMON, "--heldout", "all", "--out", str(tmp_path)])
    assert sorted(report["folds"], key=int) == [str(c) for c in range(10)]
    fold = report["folds"]["0"]
    assert {"layer0", "layer1", "ratio_top_minus_first", "flat_gmm_diag_k25"} <= set(fold)
    assert 0.0 <= fold["layer0"]["auroc"] <= 1.0 and "fpr_at_95_tpr" in fold["layer0"]
    assert set(report["mean_auroc"]) == {k for k in fold if k != "seconds"}
    assert json.loads((tmp_path / "report.json").read_text())["command"] == "outliers"
    assert (tmp_path / "outliers.png").is_file()


def test_cluster(tmp_path):
    report = evaluate.main(["cluster", *COMMON, "--out", str(tmp_path)])
    for name in ("dcgmm", "kmeans_k10", "flat_gmm_diag_k10"):
        assert set(report[name]) == {"acc", "purity", "nmi", "ari"}
    assert report["kmeans_k10"]["nmi"] > 0.5
    assert (tmp_path / "confusion.png").is_file() and (tmp_path / "clusters.png").is_file()


def test_density(tmp_path):
    report = evaluate.main(["density", *COMMON, "--patch", "4", "--out", str(tmp_path)])
    assert (tmp_path / "density.png").is_file()  # the figure the command promises
    names = {"dcgmm_full_image_k25", "dcgmm_patches4_k25", "flat_gmm_diag_k25"}
    assert names <= set(report)
    for name in names:
        assert 0.0 < report[name]["bits_per_dim"] < np.log2(17) + 2


def test_layer_choices_from_flags(tmp_path):
    args = evaluate.parse_args(["cluster", "--upper-precision-ceiling", "300", "--out", str(tmp_path)])
    gmms = [layer for layer in preset_layers(args, (1, 8, 8)) if layer.type == "gmm"]
    assert [g.precision_ceiling for g in gmms] == [20.0, 300.0]
    default = evaluate.parse_args(["cluster", "--out", str(tmp_path)])
    gmms = [layer for layer in preset_layers(default, (1, 8, 8)) if layer.type == "gmm"]
    assert [g.precision_ceiling for g in gmms] == [20.0, presets.UPPER_PRECISION_CEILING["digits"]]
    assert all(layer.type != "readout" for layer in preset_layers(args, (1, 8, 8)))
    # The density models must resolve dequantisation noise of width 1/256 (precision ~7.9e5).
    assert evaluate.parse_args(["density", "--out", str(tmp_path)]).precision_ceiling >= 12 * 256**2


def test_metric_helpers():
    labels = np.array([0, 0, 1, 1, 2, 2])
    perfect = clustering_metrics(labels, np.array([5, 5, 3, 3, 4, 4]))
    assert perfect == {"acc": 1.0, "purity": 1.0, "nmi": pytest.approx(1.0), "ari": pytest.approx(1.0)}
    scores = outlier_metrics(np.array([0, 0, 1, 1]), np.array([0.1, 0.2, 0.8, 0.9]))
    assert scores["auroc"] == 1.0 and scores["fpr_at_95_tpr"] == 0.0
    # A uniform density on [0, 1]^D has log-likelihood 0: 8 bits per dimension of 8-bit data.
    assert bits_per_dimension(np.zeros(10), dims=784) == pytest.approx(8.0)


@pytest.mark.parametrize(
    "command,flag",
    [
        ("density", ["--preset", "E"]),
        ("density", ["--per-position"]),
        ("density", ["--upper-precision-ceiling", "5"]),
        ("density", ["--flat-components", "10"]),
        ("cluster", ["--flat-components", "10"]),
    ],
)
def test_each_sub_command_takes_only_the_flags_it_uses(tmp_path, command, flag):
    with pytest.raises(SystemExit):  # were accepted and silently ignored
        evaluate.parse_args([command, *flag, "--out", str(tmp_path)])


def test_outliers_refuse_a_class_the_data_lack(tmp_path):
    with pytest.raises(DataError, match=r"--heldout 42 is not a class of digits"):
        evaluate.main(["outliers", *COMMON, "--heldout", "42", "--out", str(tmp_path)])
    assert not (tmp_path / "report.json").exists()  # was written with "auroc": NaN

import numpy as np
import pytest
import torch
from conftest import digits_stack
from pyro import poutine
from scipy.special import logsumexp
from scipy.stats import norm
from torch.distributions import Normal

from pyro_dcgmm import GMM, Fold, MaxPool, Readout, Stack, presets
from pyro_dcgmm.config import SamplingConfig, TrainConfig
from pyro_dcgmm.data.datasets import load_digits
from pyro_dcgmm.errors import ArchitectureError, ConfigError, DataError
from pyro_dcgmm.evaluation.sample_quality import (
    FlatGMMInpainter,
    ImageClassifier,
    diversity,
    inpainting_error,
    sharpness,
    within_class_diversity,
)
from pyro_dcgmm.inference import top_down
from pyro_dcgmm.inference.queries import output_mask, upward_scores
from pyro_dcgmm.inference.sampling import (
    SamplingOptions,
    Sharpening,
    default_options,
    options_from_settings,
)
from pyro_dcgmm.training.initialisation import initialise
from pyro_dcgmm.training.trainer import train


@pytest.fixture(scope="module")
def digits():
    return load_digits()


@pytest.fixture(scope="module")
def trained(digits):
    stack = digits_stack(25, 25, wait=0.1, plateau_window=5)
    config = TrainConfig(epochs=40, batch_size=100, lr=0.03, progress=False, device="cpu")
    train(stack, digits.train_images, digits.train_labels, config=config)
    return stack


@pytest.mark.parametrize("name", ["A", "B", "C", "D", "E", "EC", "F", "G"])
def test_sample_shapes_and_range_for_every_preset(name):
    stack = Stack.from_config(presets.get(name, (1, 28, 28)))
    options = SamplingOptions(top_s=2, divisor=2.0, pool_mode="sparse", sharpening=Sharpening(iterations=2))
    samples = stack.sample(3, options=options)
    assert samples.shape == (3, 1, 28, 28)
    assert float(samples.min()) >= 0.0 and float(samples.max()) <= 1.0
    conditional = stack.sample(2, classes=[3, 7], options=SamplingOptions(mean=True))
    assert conditional.shape == (2, 1, 28, 28)


def test_flat_stack_samples_match_mixture_moments():
    stack = Stack([Fold(None), GMM(3)], (1, 2, 2)).double()
    gmm = stack.layers[1]
    means = torch.tensor(
        [[0.3, 0.5, 0.7, 0.4], [0.6, 0.35, 0.45, 0.65], [0.5, 0.5, 0.3, 0.3]], dtype=torch.float64
    )
    weights = torch.tensor([0.5, 0.3, 0.2], dtype=torch.float64)
    with torch.no_grad():
        gmm.means.copy_(means)
        gmm.covariance.log_precision.copy_(
            (torch.full((3, 4), 10.0, dtype=torch.float64)).log()
        )  # sd 0.32: about 10% of draws clip
        gmm.mixing_logits.copy_(weights.log())
    n = 40000
    torch.manual_seed(0)
    samples = stack.sample(n, options=SamplingOptions(top_s=3, divisor=1.0)).view(n, 4)  # the model
    # Exact moments of the mixture clipped to [0, 1], by numerical integration of each component.
    grid = torch.linspace(-3.0, 4.0, 20001, dtype=torch.float64)
    sd = gmm.covariance.precision.detach().rsqrt()
    density = Normal(means[..., None], sd[..., None]).log_prob(grid).exp()  # (3, 4, G)
    clipped = grid.clamp(0.0, 1.0)
    step = grid[1] - grid[0]
    first = (density * clipped).sum(-1) * step  # (3, 4)
    second = (density * clipped**2).sum(-1) * step
    mean = weights @ first
    variance = weights @ second - mean**2
    standard_error = (variance / n).sqrt()
    assert torch.all((samples.mean(0) - mean).abs() < 5 * standard_error)
    assert torch.all((samples.var(0) - variance).abs() < 5 * variance * (2.5 / n) ** 0.5)


def test_generate_with_fixed_components_gives_their_means():
    stack = Stack([Fold(2, 2), GMM(4, shared=False)], (1, 4, 4))
    gmm = stack.layers[1]
    z = torch.tensor([[[0, 3], [2, 1]]])
    patches = poutine.condition(gmm.generate, data={"layer0.z": z})(1, mean=True)  # (1, D, 2, 2)
    for h in range(2):
        for w in range(2):
            torch.testing.assert_close(patches[0, :, h, w], gmm.means[h, w, z[0, h, w]].detach())


def test_masked_log_likelihood_equals_brute_force_marginal():
    torch.manual_seed(2)
    for shared in (True, False):
        stack = Stack([Fold(2, 1), GMM(3, shared=shared)], (2, 3, 3)).double()
        gmm = stack.layers[1]
        with torch.no_grad():
            gmm.means.uniform_(0, 1)
            gmm.mixing_logits.normal_()
            gmm.covariance.log_precision.copy_(
                (torch.rand(gmm.means.shape, dtype=torch.float64) * 10 + 1).log()
            )
        x = torch.rand(4, 2, 3, 3, dtype=torch.float64)
        mask = torch.rand(4, 2, 3, 3) > 0.4
        mask[0] = False  # an image with nothing observed
        x_missing = torch.where(mask, x, float("nan"))
        expected = torch.zeros(4, dtype=torch.float64)
        log_pi = torch.log_softmax(gmm.mixing_logits.detach(), -1)
        for n in range(4):
            for h in range(2):
                for w in range(2):
                    patch = x[n, :, h : h + 2, w : w + 2].reshape(-1)
                    seen = mask[n, :, h : h + 2, w : w + 2].reshape(-1)
                    means = gmm.means.detach() if shared else gmm.means.detach()[h, w]
                    precision = (
                        gmm.covariance.precision.detach()
                        if shared
                        else gmm.covariance.precision.detach()[h, w]
                    )
                    log_n = Normal(means[:, seen], precision[:, seen].rsqrt()).log_prob(patch[seen]).sum(-1)
                    pi = log_pi if shared else log_pi[h, w]
                    expected[n] += (pi + log_n).logsumexp(-1)
        torch.testing.assert_close(stack.log_prob(x_missing, 0, mask=mask), expected)
        assert expected[0] == 0.0  # nothing observed: probability one
        torch.testing.assert_close(stack.log_prob(x, 0, mask=torch.ones_like(mask)), stack.log_prob(x, 0))


def test_sharpening_raises_the_target_log_likelihood(trained):
    torch.manual_seed(1)
    plain = trained.sample(50, options=SamplingOptions(divisor=2.0))
    torch.manual_seed(1)
    sharp = trained.sample(
        50, options=SamplingOptions(divisor=2.0, sharpening=Sharpening(rate=0.01, iterations=30, pull=0.0))
    )
    assert trained.log_prob(sharp, 0).mean() > trained.log_prob(plain, 0).mean() + 5.0


def test_inpainting_keeps_known_pixels_bit_identical(trained, digits):
    x = digits.test_images[:20]
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[..., 4:] = False  # the right half is missing
    corrupted = torch.where(mask, x, float("nan"))
    options = SamplingOptions(divisor=3.0, sharpening=Sharpening(rate=0.01, iterations=10, pull=0.0))
    filled = trained.inpaint(corrupted, mask, layer=-1, n_per_image=2, options=options)
    assert filled.shape == (40, 1, 8, 8)
    assert torch.equal(filled[:, :, :, :4], x.repeat_interleave(2, 0)[:, :, :, :4])
    assert torch.isfinite(filled).all() and float(filled.max()) <= 1.0


def test_inpainting_a_few_images_at_a_time_draws_what_all_at_once_draws(trained, digits, monkeypatch):
    # top_s 1 with component means makes the draws deterministic, so chunks must change nothing
    x = digits.test_images[:7]
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[..., 4:] = False
    options = SamplingOptions(top_s=1, mean=True)
    filled = trained.inpaint(x, mask, layer=-1, n_per_image=3, options=options)
    varied = trained.variants(x, layer=0, n_per_image=3, options=options)
    monkeypatch.setattr(top_down, "DRAWN_ROWS", 4)  # one image's 3 draws at a time
    assert torch.equal(trained.inpaint(x, mask, layer=-1, n_per_image=3, options=options), filled)
    assert torch.equal(trained.variants(x, layer=0, n_per_image=3, options=options), varied)
    assert filled.shape == varied.shape == (21, 1, 8, 8)
    for count in (0, 2.5):
        with pytest.raises(DataError, match="n_per_image must be a positive int"):
            trained.inpaint(x, mask, n_per_image=count)


def test_sampling_a_few_images_at_a_time_draws_what_separate_calls_draw(trained, monkeypatch):
    # a chunked call must consume the random stream exactly as one call per chunk does
    options, classes = SamplingOptions(top_s=2), torch.tensor([3, 1, 4, 1, 5, 9, 2, 6, 5, 3])
    chunks = [slice(0, 4), slice(4, 8), slice(8, 10)]
    torch.manual_seed(11)
    separate = torch.cat([trained.sample(c.stop - c.start, options=options) for c in chunks])
    separate_classes = torch.cat([trained.sample(c.stop - c.start, classes[c], options) for c in chunks])
    monkeypatch.setattr(top_down, "DRAWN_ROWS", 4)
    torch.manual_seed(11)
    assert torch.equal(trained.sample(10, options=options), separate)
    assert torch.equal(trained.sample(10, classes, options), separate_classes)
    assert not torch.equal(separate[:4], separate[4:8])


def test_class_conditional_samples_are_classified_as_requested(trained):
    torch.manual_seed(3)
    classes = torch.arange(10).repeat(20)
    samples = trained.sample(200, classes=classes, options=SamplingOptions(top_s=1, divisor=4.0))
    accuracy = (trained.predict_proba(samples).argmax(1) == classes).float().mean()
    assert accuracy > 0.5  # chance is 0.1


def test_variants_stay_close_to_their_image(trained, digits):
    x = digits.test_images[:30]
    variants = trained.variants(x, layer=0, n_per_image=3, options=SamplingOptions(mean=True))
    assert variants.shape == (90, 1, 8, 8)
    same = (variants - x.repeat_interleave(3, 0)).pow(2).mean()
    other = (variants - x.roll(1, 0).repeat_interleave(3, 0)).pow(2).mean()
    assert same < 0.5 * other


def test_class_conditional_sharpening_with_a_pool_below_the_readout():
    stack = Stack([Fold(3, 1), GMM(4), MaxPool(2), Readout(3)], (1, 8, 8))
    options = SamplingOptions(sharpening=Sharpening(iterations=2))
    images = stack.sample(4, classes=[0, 1, 2, 0], options=options)  # raised StopIteration before
    assert images.shape == (4, 1, 8, 8) and torch.isfinite(images).all()


def test_class_conditional_samples_of_a_top_layer_split_by_class_come_from_its_components():
    gmm = GMM(4, classes=2, init="random")  # components 0, 1: class 0; 2, 3: class 1; no Readout
    stack = Stack([Fold(None), gmm], (1, 2, 2))
    with torch.no_grad():
        gmm.means.copy_(torch.tensor([0.1, 0.2, 0.8, 0.9])[:, None].expand(4, 4))
    torch.manual_seed(0)
    samples = stack.sample(40, classes=torch.arange(40) % 2, options=SamplingOptions(mean=True))
    pixel = samples.view(20, 2, 4)  # (draws, class, pixels)
    torch.testing.assert_close(pixel[:, 0].unique(), torch.tensor([0.1, 0.2]))  # both of class 0's
    torch.testing.assert_close(pixel[:, 1].unique(), torch.tensor([0.8, 0.9]))


def test_digits_samples_of_a_top_layer_split_by_class_show_their_class(digits):
    torch.manual_seed(0)
    stack = Stack([Fold(4, 2), GMM(25), Fold(None), GMM(30, wait=0.1, classes=10)], (1, 8, 8))
    config = TrainConfig(epochs=20, batch_size=100, progress=False, device="cpu")
    train(stack, digits.train_images, digits.train_labels, config=config)
    classes = torch.arange(10).repeat_interleave(20)
    samples = stack.sample(200, classes=classes, options=SamplingOptions(top_s=3, divisor=2.0))
    judge = ImageClassifier(digits.train_images, digits.train_labels)
    assert judge.agreement(samples, classes) > 0.6  # chance is 0.1


def test_bad_sampling_requests_raise():
    stack = Stack([Fold(4, 2), GMM(4), MaxPool(1)], (1, 8, 8))
    with pytest.raises(ArchitectureError, match="needs a Readout"):
        stack.sample(2, classes=[0, 1])
    with pytest.raises(DataError, match="positive int"):
        stack.sample(0)
    with pytest.raises(DataError, match="mask has shape"):
        stack.log_prob(torch.rand(2, 1, 8, 8), mask=torch.ones(2, 1, 8, 7))


def test_a_pull_that_overshoots_is_refused():
    with pytest.raises(ConfigError, match=r"rate 0\.002 times pull 500 is 1; it must be below 1"):
        Sharpening(rate=0.002, pull=500.0)
    with pytest.raises(ConfigError, match=r"sampling\.sharpen_rate and sharpen_pull"):
        SamplingConfig(sharpen_rate=0.01, sharpen_pull=1000.0)
    assert Sharpening(rate=0.002, pull=499.0).pull == 499.0


def test_ndb_separates_matching_from_mode_dropping_samples(digits):
    from pyro_dcgmm.evaluation.metrics import NDB

    train = digits.train_images.flatten(1).numpy()
    ndb = NDB(train, k=10, seed=0)
    real = ndb.evaluate(digits.test_images.flatten(1).numpy())
    dropped = ndb.evaluate(digits.test_images[digits.test_labels < 3].flatten(1).numpy())
    assert real.ndb_over_k <= 0.3 and dropped.ndb_over_k >= 0.5
    assert dropped.js_divergence > 5 * real.js_divergence


def test_sample_script_writes_figures_and_ndb(tmp_path):
    from pyro_dcgmm.cli import sample
    from pyro_dcgmm.cli import train as train_svi

    run = tmp_path / "run"
    train_svi.main(
        ["--preset", "digits", "--dataset", "digits", "--epochs", "2", "--out", str(run), "--no-progress"]
    )
    report = sample.main(
        ["--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path / "s"), "--ndb-bins", "10",
         "--ndb-samples", "200", "--ndb-train", "1000", "--sharpen-iterations", "3"]
    )  # fmt: skip
    for name in ["samples.png", "class_samples.png", "variants.png", "inpainting.png", "report.json"]:
        assert (tmp_path / "s" / name).is_file(), name
    assert set(report["ndb"]) == {"dcgmm", "flat_gmm_diag_k25", "held_out_real"}
    measures = report["measures"]
    assert set(measures) == {"real", "dcgmm_plain", "dcgmm_sharpened", "dcgmm_conditional_mean",
                             "flat_conditional_mean", "flat_conditional_sample"}  # fmt: skip
    averaged = measures["dcgmm_conditional_mean"]["inpainting_mse"]
    assert averaged < measures["dcgmm_plain"]["inpainting_mse"]  # a mean of draws beats one draw
    assert measures["real"]["class_agreement"] > 0.8  # the judge itself, on real test images
    assert measures["dcgmm_plain"]["class_agreement"] > 0.1  # above chance, even after 2 epochs
    report = sample.main(
        ["--checkpoint", str(run / "checkpoint.pt"), "--out", str(tmp_path / "quick"), "--no-ndb",
         "--sharpen-iterations", "1", "--device", "auto"]
    )  # fmt: skip
    assert "ndb" not in report and not (tmp_path / "quick" / "report.json").exists()  # was written empty
    assert (tmp_path / "quick" / "samples.png").is_file()


def test_class_conditional_draws_differ_and_show_their_class(trained, digits):
    # class evidence from the readout is used whole (Bayes with the mixing weights), not cut to top-S
    torch.manual_seed(0)
    classes = torch.arange(10).repeat_interleave(20)
    samples = trained.sample(200, classes=classes, options=SamplingOptions(top_s=3, divisor=2.0))
    rows = samples.view(10, 20, -1)
    assert all(torch.unique(row, dim=0).shape[0] == 20 for row in rows)  # no row repeats an image
    judge = ImageClassifier(digits.train_images, digits.train_labels)
    assert judge.agreement(digits.test_images, digits.test_labels) > 0.9
    assert judge.agreement(samples, classes) > 0.3  # chance is 0.1
    relative = within_class_diversity(samples, classes, digits.test_images, digits.test_labels)
    assert 0.2 < relative < 2.0


def test_two_draws_differ(trained):
    options = SamplingOptions(top_s=3)
    torch.manual_seed(1)
    first = trained.sample(8, options=options)
    second = trained.sample(8, options=options)
    assert not torch.equal(first, second)
    variants = trained.variants(torch.rand(2, 1, 8, 8), layer=-1, n_per_image=4, options=options)
    assert torch.unique(variants[:4], dim=0).shape[0] == 4


def test_sample_measures_on_known_sets():
    images = torch.rand(30, 1, 8, 8, dtype=torch.float64)
    same = images[:1].expand(30, -1, -1, -1)
    assert diversity(same) == 0.0 and diversity(images) > 0.0
    assert sharpness(torch.full((3, 1, 8, 8), 0.5)) == 0.0 and sharpness(images) > 0.0
    labels = torch.arange(30) % 3
    assert within_class_diversity(images, labels, images, labels) == pytest.approx(1.0)
    mask = torch.ones_like(images, dtype=torch.bool)
    mask[..., 4:] = False
    assert inpainting_error(torch.where(mask, images, images + 0.5), images, mask) == pytest.approx(0.25)


def test_flat_gmm_inpainting_is_its_exact_conditional(digits):
    inpainter = FlatGMMInpainter(digits.train_images, components=5)
    x = digits.test_images[:6].double().numpy().reshape(6, -1)
    everything = np.ones_like(x, dtype=bool)
    posterior = inpainter.posterior(x, everything)
    np.testing.assert_allclose(posterior, inpainter.model.predict_proba(x), atol=1e-8)
    mask = everything.copy()
    mask.reshape(6, 8, 8)[:, :, 4:] = False  # right half missing
    means, variances = inpainter.model.means_, inpainter.model.covariances_
    log_joint = np.log(inpainter.model.weights_) + np.stack(
        [(norm.logpdf(x, means[k], np.sqrt(variances[k])) * mask).sum(1) for k in range(5)], axis=1
    )  # the marginal of the observed pixels, written with scipy
    expected = np.exp(log_joint - logsumexp(log_joint, axis=1, keepdims=True))
    np.testing.assert_allclose(inpainter.posterior(x, mask), expected, atol=1e-10)
    mean = inpainter.conditional_mean(x, mask)
    np.testing.assert_array_equal(mean[mask], x[mask])  # observed pixels kept
    np.testing.assert_allclose(mean[~mask], (expected @ means)[~mask])
    sample = inpainter.conditional_sample(x, mask, seed=0)
    np.testing.assert_array_equal(sample[mask], x[mask])


def test_inpainting_follows_the_observed_half(trained, digits):
    # the posterior comes from the observed pixels and the first layer hears them too: completions
    # are closer to the truth than unconditional samples, and keep the digit's class more often
    x, labels = digits.test_images[:100], digits.test_labels[:100]
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[..., 4:] = False
    options = SamplingOptions(top_s=3, mean=True)
    torch.manual_seed(0)
    filled = trained.inpaint(x, mask, layer=-1, options=options)
    unconditional = trained.sample(100, options=options)
    assert inpainting_error(filled, x, mask) < 0.8 * inpainting_error(unconditional, x, mask)
    judge = ImageClassifier(digits.train_images, digits.train_labels)
    assert judge.agreement(filled, labels) > judge.agreement(unconditional, labels) + 0.2


def test_masks_reach_every_layer(trained):
    # digits stack: Fold(4, 2) -> 3x3 positions; the right half missing leaves column 0 observed,
    # column 1 half observed (counted), column 2 missing; the top layer sees the 3x3 map's mask
    x = torch.rand(2, 1, 8, 8)
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[..., 4:] = False
    first = trained.layers[1]
    output = first.transform(x)
    seen = output_mask(first, mask, output)
    assert seen.shape == output.shape
    assert seen[:, :, :, :2].all() and not seen[:, :, :, 2].any()
    scores = dict(upward_scores(trained, x, mask))  # the top layer marginalises column 2's inputs
    top = trained.layers[3]
    torch.testing.assert_close(scores[top], top.log_scores(first.output(scores[first]), seen))
    garbage = torch.where(seen, first.output(scores[first]), torch.randn_like(output))
    torch.testing.assert_close(scores[top], top.log_scores(garbage, seen))


def test_sampling_settings_are_stored_with_the_model(tmp_path):
    from pyro_dcgmm.cli import sample
    from pyro_dcgmm.cli import train as train_svi
    from pyro_dcgmm.config import SHIPPED_CONFIGS

    config = tmp_path / "run.toml"
    text = (SHIPPED_CONFIGS / "digits.toml").read_text()
    config.write_text(text.replace("[sampling]", "[sampling]\ndivisor = 3.0\nsharpen_iterations = 2", 1))
    run = tmp_path / "run"
    train_svi.main(["--config", str(config), "--epochs", "1", "--out", str(run), "--no-progress"])
    checkpoint = ["--checkpoint", str(run / "checkpoint.pt"), "--no-ndb"]
    report = sample.main([*checkpoint, "--out", str(tmp_path / "a")])
    assert report["sampling"]["divisor"] == 3.0 and report["options"]["sharpening"]["iterations"] == 2
    assert report["options"]["sharpening"]["rate"] == 0.001  # the shipped config's own setting
    report = sample.main([*checkpoint, "--out", str(tmp_path / "b"), "--divisor", "5"])  # a flag wins
    assert report["options"]["divisor"] == 5.0 and report["sampling"]["sharpen_iterations"] == 2
    assert report["options"]["sharpening"]["target"] == 1
    report = sample.main([*checkpoint, "--out", str(tmp_path / "c"), "--sharpen-target", "3"])
    assert report["options"]["sharpening"]["target"] == 1  # the top GMM layer of the digits stack
    report = sample.main([*checkpoint, "--out", str(tmp_path / "d"), "--sharpen-target", "next"])
    assert report["options"]["sharpening"]["target"] == "next"
    assert report["sampling"]["inpaint_top_s"] == 10 and report["options"]["top_s"] == 3
    report = sample.main([*checkpoint, "--out", str(tmp_path / "e"), "--inpaint-top-s", "2"])
    assert report["sampling"]["inpaint_top_s"] == 2


def test_inpainting_keeps_its_own_top_s():
    import argparse

    from pyro_dcgmm.cli import sample

    calls = []

    class RecordingStack:
        def inpaint(self, x, mask, layer, n_per_image, options):
            calls.append((layer, n_per_image, options.top_s, options.divisor))
            return x

    args = argparse.Namespace(inpaint_layer=-2, inpaint_top_s=10)
    x = torch.zeros(2, 1, 8, 8)
    sample.inpaint(RecordingStack(), x, x > 0, args, SamplingOptions(top_s=3, divisor=7.0), n_per_image=4)
    assert calls == [(-2, 4, 10, 7.0)]


def test_inpainting_draws_every_layer_given_the_observed_pixels(digits):
    # three GMM layers: in-painting from the top, the middle layer's components are drawn given
    # the observed pixels too, so with one pixel missing they follow the image's own MAP components
    torch.manual_seed(0)
    stack = Stack([Fold(2, 2), GMM(4), Fold(2, 2), GMM(4), Fold(None), GMM(3)], (1, 8, 8))
    for gmm in stack.gmm_layers:
        with torch.no_grad():
            inputs = stack.input_of(digits.train_images[:500], gmm)
        initialise(gmm, inputs, torch.Generator().manual_seed(0))
    x = digits.test_images[:50]
    mask = torch.ones_like(x, dtype=torch.bool)
    mask[..., 0, 0] = False
    observed, top = top_down.Observed.of(stack, x, mask, start=stack.mixture_layer(2))
    scores = dict(upward_scores(stack, x, mask))
    assert list(observed.evidence) == stack.gmm_layers[:2]
    for gmm, table in observed.evidence.items():
        torch.testing.assert_close(table, scores[gmm] - gmm.log_mixing_map())
    torch.testing.assert_close(top, torch.softmax(scores[stack.mixture_layer(2)], 1))
    own = stack.map_components(x, layer=1, mask=mask)  # (50, 2, 2)

    def middle_components(evidence):
        seen = top_down.Observed(mask, x, evidence)
        with poutine.trace() as tracer:
            top_down.sample_from(
                stack, stack.mixture_layer(2), top, 50, SamplingOptions(top_s=4, mean=True), seen
            )
        return tracer.trace.nodes[stack.layers[3].site("z")]["value"]

    torch.manual_seed(1)
    assert (middle_components(observed.evidence) == own).float().mean() > 0.9
    torch.manual_seed(1)
    first = stack.mixture_layer(0)
    blind = {first: observed.evidence[first]}  # only the first layer hears the pixels: 0.715
    assert (middle_components(blind) == own).float().mean() < 0.8


def test_the_library_samples_as_the_command_does(trained, digits):
    # no options: exactly the draws of `pyro-dcgmm sample` with its default settings
    commanded = options_from_settings(SamplingConfig(), trained)
    assert commanded["sharpened"] == default_options(trained)
    for drawn in ("library", "command"):
        torch.manual_seed(5)
        if drawn == "library":
            library = trained.sample(6), trained.variants(digits.test_images[:2])
        else:
            command = (
                trained.sample(6, options=commanded["sharpened"]),
                trained.variants(digits.test_images[:2], layer=-2, options=commanded["sharpened"]),
            )
    assert all(torch.equal(a, b) for a, b in zip(library, command, strict=True))
    assert default_options(trained, inpainting=True).top_s == SamplingConfig().inpaint_top_s


def test_a_sharpening_target_above_the_top_says_where_it_aims(trained):
    with pytest.warns(UserWarning, match="sharpen_target 7: this stack's top GMM layer is 1"):
        options = options_from_settings(SamplingConfig(sharpen_target=7), trained)
    assert options["sharpened"].sharpening.target == 1

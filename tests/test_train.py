import json
import math
from collections.abc import Callable

import pytest
import torch
from conftest import digits_stack
from pyro.infer import TraceEnum_ELBO

from pyro_dcgmm import GMM, MAX_PLATE_NESTING, Fold, Stack, presets
from pyro_dcgmm.config import TrainConfig
from pyro_dcgmm.data.datasets import load_digits
from pyro_dcgmm.errors import CheckpointError, ConfigError, DataError, NonFiniteLossError, TrainingWarning
from pyro_dcgmm.evaluation.metrics import held_out_log_likelihood as evaluate
from pyro_dcgmm.training import step as step_module
from pyro_dcgmm.training.checkpoint import load_checkpoint, save_checkpoint, stack_from_checkpoint
from pyro_dcgmm.training.diagnostics import learning_problems
from pyro_dcgmm.training.optim import make_optimizer
from pyro_dcgmm.training.run_folder import RunFiles
from pyro_dcgmm.training.step import Batch, non_finite, train_step
from pyro_dcgmm.training.trainer import Trainer, train


@pytest.fixture(scope="module")
def digits():
    return load_digits()


def small_stack(seed=0, **gmm_options):
    return digits_stack(16, 9, seed=seed, **{"plateau_window": 5, **gmm_options})


def quick(**overrides):
    return TrainConfig(
        **{"epochs": 2, "batch_size": 64, "lr": 0.03, "progress": False, "device": "cpu", **overrides}
    )


def test_short_digits_run_raises_held_out_log_likelihood(digits):
    stack = small_stack()
    before = evaluate(stack, digits.test_images)
    result = train(stack, digits.train_images, digits.train_labels, config=quick(epochs=20))
    after = evaluate(stack, digits.test_images)
    assert after[0] > before[0] + 80.0  # nats per image, first layer (-176 -> about -20)
    assert after[1] > before[1] + 20.0
    assert result.steps == 20 * 23
    accuracy = (stack.predict_proba(digits.test_images).argmax(1) == digits.test_labels).float().mean()
    assert accuracy > 0.5  # chance is 0.1


def test_same_seed_gives_identical_parameters(digits):
    first, second = small_stack(seed=3), small_stack(seed=3)
    train(first, digits.train_images, digits.train_labels, config=quick(seed=5))
    train(second, digits.train_images, digits.train_labels, config=quick(seed=5))
    for (name, a), b in zip(first.state_dict().items(), second.state_dict().values(), strict=True):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, name
    different = small_stack(seed=3)
    train(different, digits.train_images, digits.train_labels, config=quick(seed=6))
    assert not torch.equal(different.layers[1].means, first.layers[1].means)


def test_checkpoint_round_trip_gives_identical_outputs(tmp_path, digits):
    stack = small_stack()
    train(stack, digits.train_images, digits.train_labels, config=quick(epochs=1), files=tmp_path)
    raw = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert raw["format"] == "pyro_dcgmm.training.checkpoint" and "state_dict" in raw
    restored = stack_from_checkpoint(tmp_path / "checkpoint.pt")
    x = digits.test_images[:50]
    for j in range(2):
        assert torch.equal(stack.log_prob(x, j), restored.log_prob(x, j))
        assert torch.equal(stack.responsibilities(x, j), restored.responsibilities(x, j))
    assert torch.equal(stack.predict_proba(x), restored.predict_proba(x))
    assert [g.neighbourhood_width for g in restored.gmm_layers] == [
        g.neighbourhood_width for g in stack.gmm_layers
    ]


def test_resume_reproduces_uninterrupted_run(tmp_path, digits):
    straight = small_stack()
    train(straight, digits.train_images, digits.train_labels, config=quick(epochs=4))
    interrupted = small_stack()
    train(
        interrupted,
        digits.train_images,
        digits.train_labels,
        config=quick(epochs=4, max_steps=35),  # stops inside the second epoch
        files=tmp_path,
    )
    resumed = small_stack(seed=99)  # different init: everything must come from the checkpoint
    result = train(
        resumed,
        digits.train_images,
        digits.train_labels,
        config=quick(epochs=4),
        files=RunFiles(tmp_path, resume=tmp_path / "checkpoint.pt"),
    )
    for (name, a), b in zip(straight.state_dict().items(), resumed.state_dict().values(), strict=True):
        assert torch.equal(a, b) if torch.is_tensor(a) else a == b, name
    assert [h["epoch"] for h in result.history] == [1, 2, 3, 4]
    steps = [json.loads(line)["step"] for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    assert steps == sorted(steps)
    seconds = [h["seconds"] for h in result.history]
    assert seconds == sorted(seconds)  # the resumed run's clock goes on from the checkpoint
    interrupted_seconds = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["training"]["seconds"]
    assert interrupted_seconds >= seconds[-1]


def test_resume_from_other_architecture_fails(tmp_path, digits):
    stack = small_stack()
    train(stack, digits.train_images, digits.train_labels, config=quick(epochs=1), files=tmp_path)
    other = Stack.from_config(presets.get("digits", (1, 8, 8)))
    with pytest.raises(CheckpointError, match="different architecture"):
        train(
            other,
            digits.train_images,
            digits.train_labels,
            config=quick(),
            files=RunFiles(resume=tmp_path / "checkpoint.pt"),
        )


def test_wait_freezes_upper_layers(digits):
    stack = small_stack()
    top_before = stack.layers[3].means.detach().clone()
    bottom_before = stack.layers[1].means.detach().clone()
    train(stack, digits.train_images, None, config=quick(epochs=5, max_steps=20))  # 20 of 115 < 0.2
    assert torch.equal(stack.layers[3].means, top_before)
    assert not torch.equal(stack.layers[1].means, bottom_before)


def test_waiting_layer_does_not_anneal(digits):
    stack = small_stack(annealing=True, plateau_tolerance=1e6)  # every window is a plateau
    bottom, top = stack.layers[1], stack.layers[3]
    bottom_width, top_width = bottom.neighbourhood_width, top.neighbourhood_width
    with pytest.warns(TrainingWarning, match="annealing unfinished"):
        train(stack, digits.train_images, None, config=quick(epochs=5, max_steps=20))  # 20 of 115 < 0.2
    assert bottom.neighbourhood_width < bottom_width
    assert top.neighbourhood_width == top_width


def test_sgd_scales_shared_layer_rate_by_positions():
    stack = small_stack()
    optimizer = make_optimizer(stack, TrainConfig(optimizer="sgd", lr=0.5))
    rates = [group["lr"] for group in optimizer.param_groups]
    assert rates[0] == pytest.approx(0.5 / 9)  # first GMM: 3x3 positions, means
    assert rates[3] == pytest.approx(0.5)  # second GMM: one position


@pytest.mark.parametrize(("batch", "factor"), [(100, 1.0), (400, 2.0), (25, 0.5)])
def test_the_readout_beside_online_em_learns_at_a_rate_set_for_the_reference_batch(batch, factor):
    stack = small_stack()
    optimizer = make_optimizer(stack, TrainConfig(lr=0.01, batch_size=batch, em_reference_batch=100))
    em, readout = optimizer.optimizers
    assert [group["lr"] for group in readout.param_groups] == [pytest.approx(0.01 * factor)]
    assert em.batch_multiple == batch / 100


def test_sgd_training_runs(digits):
    stack = small_stack()
    before = evaluate(stack, digits.test_images)
    train(stack, digits.train_images, None, config=quick(optimizer="sgd", lr=0.05, epochs=3))
    assert evaluate(stack, digits.test_images)[0] > before[0]


@pytest.mark.filterwarnings("ignore:Encountered NaN")
def test_non_finite_loss_stops_training_before_writing(tmp_path, digits):
    stack = small_stack()
    with torch.no_grad():
        stack.layers[3].means[0, 0] = float("nan")
    with pytest.raises(NonFiniteLossError, match=r"objective\(s\) L1 at step 0 \(epoch 0\)"):
        train(stack, digits.train_images, None, config=quick(), files=tmp_path)
    assert not (tmp_path / "checkpoint.pt").exists()


def poison_gradient_at(stack, step: int) -> Callable:
    """A callback that makes the gradient of the lowest GMM's precisions NaN at ``step``."""
    at_step = [False]
    stack.layers[1].covariance.log_precision.register_hook(
        lambda grad: grad * float("nan") if at_step[0] else grad
    )

    def callback(trainer):
        at_step[0] = trainer.state.step == step

    return callback


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("check_every", [1, 4])
def test_skip_policy_keeps_last_good_parameters(tmp_path, digits, check_every):
    images = digits.train_images.clone()
    stack = small_stack()
    config = quick(epochs=1, non_finite="skip", log_every=1, check_every=check_every)
    with pytest.warns(TrainingWarning, match="1 step was skipped for non-finite values"):
        Trainer(stack, config, tmp_path, [poison_gradient_at(stack, 2)]).fit(images)
    records = [json.loads(line) for line in (tmp_path / "log.jsonl").read_text().splitlines()]
    skipped = [r for r in records if r.get("event") == "skipped"]
    assert [(r["step"], r["reason"]) for r in skipped] == [(3, "non-finite gradient")]
    assert all(torch.isfinite(p).all() for p in stack.parameters())
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)["state_dict"]
    assert all(torch.isfinite(v).all() for v in state.values() if torch.is_tensor(v))


@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.filterwarnings("ignore:Encountered NaN")
@pytest.mark.parametrize("non_finite", ["skip", "raise"])
def test_steps_checked_in_windows_end_where_steps_checked_one_by_one_do(digits, monkeypatch, non_finite):
    images, labels = digits.train_images[:600], digits.train_labels[:600]
    project = Stack.project_

    def project_or_fail(stack):  # an update that non-finite values break, as a failed factorisation would
        if not all(bool(p.isfinite().all()) for p in stack.parameters()):
            raise RuntimeError("the update met non-finite values")
        project(stack)

    monkeypatch.setattr(Stack, "project_", project_or_fail)
    runs = []
    for check_every in (1, 4, 7):  # 10 steps per epoch: windows end inside and at the epoch's end
        stack = small_stack()
        config = quick(epochs=3, check_every=check_every, non_finite=non_finite, dequantize_levels=17)
        trainer = Trainer(stack, config, callbacks=[poison_gradient_at(stack, 13)])
        if non_finite == "raise":
            with pytest.raises(NonFiniteLossError, match="non-finite gradient at step 13 "):
                trainer.fit(images, labels)
        else:
            with pytest.warns(TrainingWarning, match="1 step was skipped"):
                runs.append((trainer.fit(images, labels).history, stack.state_dict()))
        assert trainer.state.step == (14 if non_finite == "raise" else 30)
    for history, state in runs[1:]:
        assert without_times(history) == without_times(runs[0][0])
        assert_same_state(state, runs[0][1])


def test_a_window_never_keeps_the_update_of_a_step_whose_loss_alone_is_not_finite(digits, monkeypatch):
    # a loss that is infinite while its gradients are finite (as a Readout's can be): a checked
    # step skips the update, so a window must not keep it either
    original, at_step = step_module.step_values, [False]

    def infinite_loss_at_step(*args):
        values = original(*args)
        return torch.cat([values[:1] + float("inf"), values[1:]]) if at_step[0] else values

    def callback(trainer):
        at_step[0] = trainer.state.step == 5

    monkeypatch.setattr(step_module, "step_values", infinite_loss_at_step)
    states = []
    for check_every in (1, 4):
        stack = small_stack()
        with pytest.warns(TrainingWarning, match="1 step was skipped"):
            config = quick(epochs=1, check_every=check_every, non_finite="skip")
            Trainer(stack, config, callbacks=[callback]).fit(
                digits.train_images[:600], digits.train_labels[:600]
            )
        states.append(stack.state_dict())
    assert_same_state(states[1], states[0])


def without_times(history: list[dict]) -> list[dict]:
    return [{key: value for key, value in record.items() if key != "seconds"} for record in history]


def assert_same_state(state: dict, expected: dict) -> None:
    for name, value in expected.items():
        assert torch.equal(state[name], value) if torch.is_tensor(value) else state[name] == value, name


def test_a_layer_that_anneals_is_checked_every_step(digits):
    states = []
    for check_every in (1, 6):
        stack = small_stack(annealing=True)
        initial = stack.layers[1].neighbourhood_width
        train(stack, digits.train_images[:600], None, config=quick(epochs=3, check_every=check_every))
        assert stack.layers[1].neighbourhood_width < initial  # its width shrank during the run
        states.append(stack.state_dict())
    assert_same_state(states[1], states[0])


def test_skip_policy_gives_up_after_too_many_bad_steps(digits):
    stack = small_stack(init="random")  # data initialisation would overwrite the poisoned mean
    with torch.no_grad():
        stack.layers[1].means[0, 0] = float("inf")
    config = quick(non_finite="skip", max_skipped_steps=3)
    with pytest.raises(NonFiniteLossError, match="4 steps in a row"):
        train(stack, digits.train_images, None, config=config)


def test_training_rejects_bad_data(digits):
    stack = small_stack()
    with pytest.raises(DataError, match="at least 2"):
        train(stack, digits.train_images[:1], None, config=quick())
    with pytest.raises(DataError, match="labels has shape"):
        train(stack, digits.train_images, digits.train_labels[:-1], config=quick())
    with pytest.raises(DataError, match=r"lie in \[0, 9\]"):
        train(stack, digits.train_images, digits.train_labels + 5, config=quick())


@pytest.mark.parametrize(
    "overrides,match",
    [
        ({"epochs": 0}, "training.epochs must be >= 1"),
        ({"batch_size": -5}, "training.batch_size must be >= 1"),
        ({"lr": 0.0}, "training.lr must be > 0, got 0.0"),
        ({"lr": float("nan")}, "training.lr must be finite and > 0, got nan"),
        ({"max_steps": 0}, "training.max_steps must be >= 1"),
    ],
)
def test_impossible_training_settings_fail(digits, overrides, match):
    with pytest.raises(ConfigError, match=match):
        train(small_stack(), digits.train_images, None, config=quick(**overrides))


@pytest.mark.skipif(torch.cuda.is_available(), reason="needs a machine without CUDA")
def test_cuda_without_a_gpu_fails_clearly(digits):
    with pytest.raises(ConfigError, match="CUDA is not available"):
        train(small_stack(), digits.train_images, None, config=quick(device="cuda"))


def test_truncated_checkpoint_fails_clearly(tmp_path):
    stack = small_stack()
    save_checkpoint(tmp_path / "c.pt", stack)
    data = (tmp_path / "c.pt").read_bytes()
    (tmp_path / "t.pt").write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointError, match="truncated"):
        load_checkpoint(tmp_path / "t.pt")
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "missing.pt")


@pytest.mark.parametrize("objective", ["closed_form", "enumerated"])
def test_step_reports_each_layers_own_loss(digits, objective):
    # the per-layer losses come from the model's "objective" sites, not from state kept by the layers
    stack = small_stack()
    batch, labels = digits.train_images[:50], digits.train_labels[:50]
    config = quick(objective=objective, optimizer="adam")
    expected = [-mean for mean in evaluate(stack, batch)]  # before the step, exact (no annealing)
    elbo = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING, strict_enumeration_warning=False)
    optimizer = make_optimizer(stack, config)
    outcome = train_step(stack, elbo, optimizer, Batch(batch, labels, 500), [], config)
    assert outcome.problem is None
    assert outcome.layer_losses == pytest.approx(expected, rel=1e-5)
    assert not any(hasattr(gmm, "last_loss") for gmm in stack.gmm_layers)


def initialised_stack():
    stack = small_stack()
    for layer in stack.mixture_layers:
        layer.mark_initialised_()
    return stack


def test_a_collapsed_layer_and_a_worse_held_out_fit_are_named():
    stack = initialised_stack()
    with torch.no_grad():
        stack.layers[1].mixing_logits.copy_(torch.tensor([30.0] + [0.0] * 15))
    history = [{"validation_log_likelihood": [-100.0, 1.0]}, {"validation_log_likelihood": [-120.0, 2.0]}]
    problems = learning_problems(stack, history, skipped_steps=0)
    assert len(problems) == 2
    assert problems[0].startswith("GMM layer 0 collapsed: its mixing weights use 1.00 of 16 components")
    assert "held-out log-likelihood fell from -100 after the first epoch to -120" in problems[1]
    assert learning_problems(initialised_stack(), history[:1], skipped_steps=0) == []
    assert learning_problems(small_stack(), [], skipped_steps=0)[0].startswith("layer 0 was never trained")


def test_a_diverging_run_warns(digits):
    config = quick(epochs=3, optimizer="adam", lr=3.0, non_finite="skip", max_skipped_steps=1000)
    with pytest.warns(TrainingWarning, match="held-out log-likelihood fell"):
        train(small_stack(), digits.train_images, None, config=config, validation=digits.test_images)


def test_a_non_finite_total_without_readout_is_not_blamed_on_a_readout():
    without = Stack([Fold(4, 2), GMM(4)], (1, 8, 8))
    assert non_finite(without, float("inf"), [1.0], 0.0) == "non-finite total loss"
    assert non_finite(small_stack(), float("inf"), [1.0, 2.0], 0.0) == "non-finite loss in the readout"


def test_a_layer_split_by_class_needs_labels_of_its_classes():
    stack = Stack([Fold(None), GMM(4, classes=2)], (1, 8, 8))
    images = load_digits().train_images[:20]
    config = TrainConfig(epochs=1, progress=False, device="cpu")
    with pytest.raises(DataError, match=r"layer\(s\) \[0\] split their components by class"):
        train(stack, images, config=config)
    with pytest.raises(DataError, match=r"labels must lie in \[0, 1\]"):
        train(stack, images, torch.arange(20) % 3, config=config)


def test_every_step_projects_the_precisions_into_their_bounds():
    # Adam with a large rate pushes the log-precisions past the ceiling; the step projects them back
    torch.manual_seed(0)
    stack = Stack([Fold(4, 2), GMM(4, precision_ceiling=2.0)], (1, 8, 8))
    gmm = stack.layers[1]
    config = TrainConfig(optimizer="adam", lr=5.0, device="cpu")
    optimizer = make_optimizer(stack, config)
    elbo = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)
    images = load_digits().train_images[:50]
    for _ in range(3):
        assert train_step(stack, elbo, optimizer, Batch(images, None, 50), [], config).problem is None
    log_precision = gmm.covariance.log_precision.detach()
    assert float(log_precision.max()) <= math.log(2.0) + 1e-6
    assert float(log_precision.max()) == pytest.approx(math.log(2.0))  # it was pushed there


def test_a_version_2_checkpoint_is_migrated(tmp_path):
    # version 2 held a GMM's log-precisions on the layer itself and no mask of active components
    torch.manual_seed(0)
    stack = Stack([Fold(3, 1), GMM(4)], (1, 6, 6))
    save_checkpoint(tmp_path / "new.pt", stack)
    state = torch.load(tmp_path / "new.pt", weights_only=True)
    values = state["state_dict"]
    values["layers.1.log_precision"] = values.pop("layers.1.covariance.log_precision")
    del values["layers.1.active"]
    torch.save({**state, "version": 2}, tmp_path / "old.pt")
    loaded = stack_from_checkpoint(tmp_path / "old.pt")
    for name, value in stack.state_dict().items():
        assert torch.equal(loaded.state_dict()[name], value) if torch.is_tensor(value) else True
    assert load_checkpoint(tmp_path / "old.pt")["version"] == 3
    torch.save({**state, "version": 1}, tmp_path / "older.pt")
    with pytest.raises(CheckpointError, match="format version 1; this pyro_dcgmm reads versions 2 to 3"):
        load_checkpoint(tmp_path / "older.pt")


def test_streaming_the_data_from_the_host_trains_exactly_as_data_on_the_device(digits):
    runs = []
    for placement in ("device", "host"):
        stack = digits_stack(9, 4)
        config = TrainConfig(epochs=2, batch_size=64, data_placement=placement, device="cpu", progress=False)
        trainer = Trainer(stack, config)
        trainer.fit(digits.train_images[:500], digits.train_labels[:500])
        assert trainer.data.placement == placement
        runs.append(stack.state_dict())
    for name, value in runs[0].items():
        torch.testing.assert_close(runs[1][name], value, rtol=0, atol=0)

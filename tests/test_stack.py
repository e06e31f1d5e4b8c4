import pyro
import pytest
import torch
from pyro import poutine
from pyro.infer import TraceEnum_ELBO, infer_discrete

from pyro_dcgmm import GMM, MAX_PLATE_NESTING, Fold, MaxPool, Readout, Stack, presets
from pyro_dcgmm.errors import ArchitectureError, DataError


def three_layer_stack(width=0.01):
    options = {"width_init": width}
    layers = [
        Fold(3, 1), GMM(9, **options),
        MaxPool(2), Fold(2, 1), GMM(4, shared=False, **options),
        Fold(None), GMM(5, **options),
    ]  # fmt: skip
    stack = Stack(layers, (1, 8, 8)).double()
    with torch.no_grad():
        for gmm in stack.gmm_layers:
            gmm.means.uniform_(0, 1)
            gmm.mixing_logits.normal_()
    return stack


@pytest.mark.parametrize("annealed", [True, False])
def test_elbo_equals_logsumexp_one_layer(images64, annealed):
    stack = Stack([Fold(3, 1), GMM(9, annealing=True, width_init=1.0)], (1, 8, 8)).double()
    loss = TraceEnum_ELBO(max_plate_nesting=3).loss(stack.model, stack.guide, images64, annealed=annealed)
    assert loss == pytest.approx(stack.loss(images64, annealed=annealed).item(), rel=1e-12)


@pytest.mark.parametrize("width", [0.01, 1.2])
def test_elbo_equals_logsumexp_three_layers(images64, width):
    stack = three_layer_stack(width)
    elbo = TraceEnum_ELBO(max_plate_nesting=MAX_PLATE_NESTING)
    loss = elbo.differentiable_loss(stack.model, stack.guide, images64)
    expected = stack.loss(images64, annealed=True)
    torch.testing.assert_close(loss, expected, rtol=1e-12, atol=0)
    scaled = elbo.differentiable_loss(stack.model, stack.guide, images64, num_data=70)
    torch.testing.assert_close(scaled, expected * 10, rtol=1e-12, atol=0)


def test_closed_form_objective_equals_enumerated(images64):
    stack = three_layer_stack(width=1.2)
    labels = torch.tensor([0, 1, 2, 3, 4, 0, 1])
    stack = Stack([*stack.layers, Readout(5)], (1, 8, 8)).double()
    elbo = TraceEnum_ELBO(max_plate_nesting=3, strict_enumeration_warning=False)
    params = list(stack.parameters())
    losses, gradients = [], []
    for enumerated in (True, False):
        loss = elbo.differentiable_loss(
            stack.model, stack.guide, images64, labels=labels, num_data=20, enumerated=enumerated
        )
        losses.append(loss)
        gradients.append(torch.autograd.grad(loss, params))
    hand_written = stack.loss(images64, labels=labels, num_data=20)
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-12, atol=0)
    torch.testing.assert_close(losses[0], hand_written, rtol=1e-12, atol=0)
    for a, b, c in zip(*gradients, torch.autograd.grad(hand_written, params), strict=True):
        torch.testing.assert_close(a, b, rtol=1e-10, atol=1e-12)
        torch.testing.assert_close(a, c, rtol=1e-10, atol=1e-12)


def test_gradients_stay_within_each_layer(images64):
    stack = three_layer_stack(width=1.0)
    elbo = TraceEnum_ELBO(max_plate_nesting=3)
    elbo.differentiable_loss(stack.model, stack.guide, images64).backward()
    inputs = [(gmm, stack.input_of(images64, gmm).detach()) for gmm in stack.gmm_layers]
    for layer, layer_input in inputs:
        params = [layer.means, layer.covariance.log_precision, layer.mixing_logits]
        own = TraceEnum_ELBO(max_plate_nesting=3).differentiable_loss(layer, lambda x: None, layer_input)
        others = [g for g in stack.gmm_layers if g is not layer]
        other_params = [p for g in others for p in g.parameters()]
        grads = torch.autograd.grad(own, params + other_params, allow_unused=True)
        for stack_param, grad in zip(params, grads[: len(params)], strict=True):
            torch.testing.assert_close(stack_param.grad, grad, rtol=1e-10, atol=1e-12)
        assert all(g is None for g in grads[len(params) :])


def test_responsibilities_equal_compute_marginals(images64):
    stack = three_layer_stack()
    marginals = TraceEnum_ELBO(max_plate_nesting=3).compute_marginals(
        stack.model, stack.guide, images64, annealed=False
    )
    for j in range(len(stack.gmm_layers)):
        probs = marginals[f"layer{j}.z"].probs  # (N, H, W, K)
        responsibilities = stack.responsibilities(images64, j)  # (N, K, H, W)
        torch.testing.assert_close(responsibilities, probs.movedim(-1, 1).expand_as(responsibilities))


def test_map_components_equal_infer_discrete(images64):
    stack = three_layer_stack()
    model = infer_discrete(stack.model, first_available_dim=-1 - MAX_PLATE_NESTING, temperature=0)
    trace = poutine.trace(model).get_trace(images64, annealed=False)
    for j in range(len(stack.gmm_layers)):
        map_z = trace.nodes[f"layer{j}.z"]["value"]
        assert torch.equal(stack.map_components(images64, j), map_z)
        assert torch.equal(map_z, stack.responsibilities(images64, j).argmax(1))


def test_readout_observes_labels(images64):
    stack = Stack([Fold(4, 2), GMM(4), Readout(3)], (1, 8, 8)).double()
    with torch.no_grad():
        stack.layers[2].weight.normal_()
    labels = torch.tensor([0, 1, 2, 0, 1, 2, 0])
    elbo = TraceEnum_ELBO(max_plate_nesting=3)
    with_labels = elbo.loss(stack.model, stack.guide, images64, labels=labels)
    without = elbo.loss(stack.model, stack.guide, images64)
    logits = stack.layers[2].logits(stack.input_of(images64, stack.layers[2]))
    cross_entropy = torch.nn.functional.cross_entropy(logits, labels, reduction="sum")
    assert with_labels - without == pytest.approx(cross_entropy.item(), rel=1e-10)
    probs = stack.predict_proba(images64)
    torch.testing.assert_close(probs, torch.softmax(logits, -1).detach())


@pytest.mark.parametrize("name", [n for n in presets.names() if n != "digits"])
def test_presets_build_and_run_on_28x28(name):
    stack = Stack.from_config(presets.get(name, (1, 28, 28)))
    x = torch.rand(3, 1, 28, 28)
    labels = torch.tensor([0, 5, 9])
    elbo = TraceEnum_ELBO(max_plate_nesting=stack.max_plate_nesting)
    loss = elbo.differentiable_loss(stack.model, stack.guide, x, labels=labels)
    loss.backward()
    assert torch.isfinite(loss)
    all_layers = stack.layer_log_probs(x)
    assert all_layers.shape == (3, len(stack.objective_names))  # a joint stack has one: log p(x)
    for j in range(len(stack.objective_names)):
        torch.testing.assert_close(stack.log_prob(x, j), all_layers[:, j])
    top = stack.responsibilities(x)
    assert top.shape == (3, stack.mixture_layers[-1].components, 1, 1)
    torch.testing.assert_close(top.sum(1), torch.ones(3, 1, 1))


def test_digits_preset_on_8x8():
    stack = Stack.from_config(presets.get("digits", (1, 8, 8)))
    x = torch.rand(2, 1, 8, 8)
    assert stack.responsibilities(x, 0).shape == (2, 100, 3, 3)
    assert stack.predict_proba(x).shape == (2, 10)


def test_preset_options_override_every_gmm_layer():
    gmms = [layer for layer in presets.get("E", components=49).layers if layer.type == "gmm"]
    assert [g.components for g in gmms] == [49, 49, 49]  # raised TypeError before
    assert [g.precision_ceiling for g in gmms] == [20.0, 10.0, 10.0]
    assert [g.output for g in gmms] == ["log_responsibilities"] * 2 + ["responsibilities"]


def test_preset_that_does_not_fit_raises():
    with pytest.raises(ArchitectureError, match="larger than its input"):
        Stack.from_config(presets.get("C", (1, 8, 8)))


def test_two_stacks_do_not_share_parameters():
    torch.manual_seed(0)
    first = Stack.from_config(presets.get("digits", (1, 8, 8)))
    torch.manual_seed(1)
    second = Stack.from_config(presets.get("digits", (1, 8, 8)))
    x = torch.rand(4, 1, 8, 8)
    elbo = TraceEnum_ELBO(max_plate_nesting=3)
    elbo.loss(first.model, first.guide, x)
    elbo.loss(second.model, second.guide, x)
    assert not torch.equal(first.layers[1].means, second.layers[1].means)
    assert len(pyro.get_param_store()) == 0


def test_param_sites_are_visible_to_pyro(images64):
    stack = three_layer_stack()
    trace = poutine.trace(stack.model).get_trace(images64)
    params = {name for name, site in trace.nodes.items() if site["type"] == "param"}
    assert {"layers.1.means", "layers.1.covariance.log_precision", "layers.1.mixing_logits"} <= params


@pytest.mark.parametrize(
    "bad,match",
    [
        (torch.rand(2, 1, 7, 8), "expected"),
        (torch.rand(2, 8, 8, 1), "expected"),
        (torch.randint(0, 2, (2, 1, 8, 8)), "dtype"),
        (torch.full((2, 1, 8, 8), float("nan")), "NaN"),
        (torch.rand(2, 1, 8, 8) * 255, "outside the data range"),
        (torch.rand(0, 1, 8, 8), "empty"),
    ],
)
def test_bad_queries_raise(bad, match):
    stack = Stack.from_config(presets.get("digits", (1, 8, 8)))
    with pytest.raises(DataError, match=match):
        stack.log_prob(bad)


def test_bad_layer_index_raises():
    stack = Stack.from_config(presets.get("digits", (1, 8, 8)))
    with pytest.raises(IndexError, match=r"this stack has 2 layers with components"):
        stack.responsibilities(torch.rand(1, 1, 8, 8), layer=2)


def test_readout_and_layers_split_by_class_must_agree_on_the_classes():
    with pytest.raises(ArchitectureError, match=r"agree on the number of classes, got \[3, 4\]"):
        Stack([Fold(None), GMM(6, classes=3), Readout(4)], (1, 4, 4))
    assert Stack([Fold(None), GMM(6, classes=3), Readout(3)], (1, 4, 4)).num_classes == 3
    assert Stack([Fold(None), GMM(6)], (1, 4, 4)).num_classes is None

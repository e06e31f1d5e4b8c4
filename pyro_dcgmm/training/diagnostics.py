"""Signs that a finished training run did not learn, each said in one sentence.

:func:`train <pyro_dcgmm.training.trainer.train>` warns (:class:`~pyro_dcgmm.errors.TrainingWarning`) with
every problem :func:`learning_problems` finds, so a run that did not learn says so.
"""

from __future__ import annotations

import torch

COLLAPSED_BELOW = 1.5  # effective components (exp of the mixing weights' entropy) of a collapsed layer
WORSE_BY = 0.01  # relative drop of the held-out log-likelihood that counts as getting worse


def effective_components(log_mixing: torch.Tensor) -> float:
    """``exp(entropy)`` of the mixing weights, averaged over positions: 1 when one component takes
    all the weight, K when all K share it evenly."""
    entropy = -(log_mixing.exp() * log_mixing).sum(-1)
    return float(entropy.exp().mean())


def learning_problems(stack, history: list[dict], skipped_steps: int) -> list[str]:
    """What suggests that training ``stack`` (with this epoch ``history``) did not learn."""
    problems = [
        f"layer {n} was never trained: its wait ({layer.config.wait:g} of the planned steps) did not end "
        "before the run stopped; raise the step budget (max_steps, epochs) or lower its wait"
        for n, layer in enumerate(stack.mixture_layers)
        if not layer.is_initialised
    ]
    for j, gmm in enumerate(stack.gmm_layers):
        if gmm.config.annealing and not gmm.annealing_finished:
            problems.append(
                f"GMM layer {j}: annealing unfinished (width {gmm.neighbourhood_width:.3g}, floor "
                f"{gmm.config.width_floor:g}), so its objective is not yet the likelihood: train longer "
                "or lower plateau_window"
            )
        used = effective_components(gmm.log_mixing().detach())
        if gmm.components > 1 and used < COLLAPSED_BELOW:
            problems.append(
                f"GMM layer {j} collapsed: its mixing weights use {used:.2f} of {gmm.components} components"
            )
    key = "validation_log_likelihood"
    held_out = [record[key][0] for record in history if key in record]
    if len(held_out) > 1 and held_out[-1] < held_out[0] - WORSE_BY * abs(held_out[0]):
        problems.append(
            f"the first GMM layer's held-out log-likelihood fell from {held_out[0]:.4g} after the first "
            f"epoch to {held_out[-1]:.4g}: lower the learning rate"
        )
    if skipped_steps:
        steps = "1 step was" if skipped_steps == 1 else f"{skipped_steps} steps were"
        problems.append(f"{steps} skipped for non-finite values (the log names them)")
    return problems

"""A run's figures and its final evaluation: the numbers (vae_kl.evaluation), the verdict and every PNG,
drawn from the model, its validation digits and metrics.csv's rows; training and `evaluate.py --run`
both call `evaluate_run`.
"""

import os
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from vae_kl.evaluation import bounds, codes, information, metrics, noise, verdict
from vae_kl.reports import plots

if TYPE_CHECKING:
    from vae_kl.evaluation.clock import Clock

PATH_POINTS = 1000  # Epochs drawn on the rate-distortion path at most (100,000 took a minute to draw, 1,000 a second).


def latent_extent(z_mean: np.ndarray, prior_samples: np.ndarray, dims: tuple[int, ...] = (0, 1), quantile: float = 0.01,
                  margin: float = 0.1) -> tuple[float, ...]:
    """Axis ranges covering the posterior means and the prior: their 1st to 99th percentiles, padded."""
    extent = []
    for dim in dims:
        values = np.concatenate([z_mean[:, dim], prior_samples[:, dim]])
        low, high = np.quantile(values, [quantile, 1 - quantile])
        pad = margin * max(high - low, 1e-3)
        extent += [float(low - pad), float(high + pad)]
    return tuple(extent)


def history_figures(vae: Any, run_dir: str, history: list[dict], steps_per_epoch: int) -> None:
    """The figures drawn from metrics.csv's rows: the loss curves, the information per epoch and the KL
    weight over the run's steps (the objective's own schedule, with the weight each epoch logged)."""
    described = metrics.describe_objective(vae)
    plots.loss_curves(history, os.path.join(run_dir, "loss_curves.png"),
                      f"Loss per epoch: {described['formula']} (effective β = {described['effective_beta']:g})")
    plots.information_curves(history, os.path.join(run_dir, "information.png"), verdict.COLLAPSED_BELOW_NATS,
                             information.INFORMATIVE_UNIT_NATS, "Information the code carries, per epoch")
    goal, total = vae.objective, vae.objective.total_steps
    epoch_steps = [row["epoch"] * steps_per_epoch for row in history]
    epoch_weights = [row["kl_weight"] for row in history]
    label = "KL weight λ"
    if goal.chooses_beta:  # GECO's weight is known where it was logged: from its start (β = 1), epoch by epoch.
        steps, weights = [0, *epoch_steps], [goal.kl_weight, *epoch_weights]
        schedule = f"chosen by GECO for κ = {goal.target_distortion:g}"
    elif goal.target_rate is not None:  # Capacity: the schedule ramps the target rate C, not a weight.
        steps = np.linspace(0, total, min(total, 2000) + 1)
        weights, label = np.asarray(goal.rate_at(steps)), "target rate C (nats)"
        epoch_weights = [row.get("target_rate", np.nan) for row in history]
        schedule = f"capacity C up to {goal.target_rate:g} nats ({goal.kl_schedule})"
    else:
        steps = np.linspace(0, total, min(total, 2000) + 1)
        weights, schedule = np.asarray(goal.kl_weight_at(steps)), goal.kl_schedule
    plots.kl_schedule(steps, weights, epoch_steps, epoch_weights, os.path.join(run_dir, "kl_schedule.png"),
                      schedule=schedule, ylabel=label)


def write_figures(vae: Any, run_dir: str, x: np.ndarray, labels: np.ndarray, arrays: dict, history: list[dict],
                  title: str, steps_per_epoch: Optional[int] = None) -> None:
    """Every figure of a finished run, from its model, its validation digits and metrics.csv's rows: the
    one function training and `evaluate.py --run` both call."""
    if history and steps_per_epoch:
        history_figures(vae, run_dir, history, steps_per_epoch)
    decode = lambda z: vae.decode(z).numpy()  # noqa: E731
    index = plots.pick_one_per_class(labels)
    plots.reconstructions(x[index], codes.reconstruct(vae, x[index]), labels[index],
                          os.path.join(run_dir, "reconstructions.png"), title)
    active, z_mean = arrays["active"], arrays["z_mean"]
    dims = tuple(np.argsort(-arrays["information"])[:2]) if z_mean.shape[1] > 2 else (0, 1)
    plots.latent_clusters(z_mean, labels, os.path.join(run_dir, "latent_clusters.png"), dims)
    prior_samples = vae.prior.sample(1000, bounds.EVAL_SEED, vae.encode)
    if vae.latent_dim == 2:
        plots.latent_manifold(decode, os.path.join(run_dir, "latent_space.png"),
                              extent=latent_extent(z_mean, prior_samples),
                              title="Digits decoded across the latent space (1st to 99th percentiles of the "
                                    "codes and the prior)")
    states = ["informative" if value >= information.INFORMATIVE_UNIT_NATS else "unused"
              for value in arrays["information"]]
    plots.kl_per_dimension(arrays["kl_per_dim"] if arrays["kl_per_dim"] is not None else arrays["information"],
                           active, os.path.join(run_dir, "kl_per_dim.png"), information=arrays["information"],
                           states=states, title=f"KL and information I(x; z_j) per latent unit: {title}")
    plots.samples(decode(prior_samples[:100]), os.path.join(run_dir, "samples.png"),
                  f"Samples from the prior ({vae.prior.name_in_config})")
    if history:
        kept = np.unique(np.linspace(0, len(history) - 1, min(len(history), PATH_POINTS)).round().astype(int))
        points = [(history[i]["epoch"], history[i]["val_kl"], history[i]["val_reconstruction"]) for i in kept]
        shown = "" if len(kept) == len(history) else f", {len(kept)} of the {len(history)} epochs evenly spaced"
        plots.rate_distortion(points, os.path.join(run_dir, "rate_distortion.png"),
                              f"Rate-distortion path per epoch (validation{shown})")


def evaluate_run(vae: Any, run_dir: str, x_val: np.ndarray, y_val: np.ndarray, k: int, max_examples: Optional[int],
                 history: list[dict], steps: int, clock: Optional["Clock"] = None) -> tuple[dict, dict]:
    """Compute the validation numbers, the verdict and the figures of a run; returns (validation, verdict).

    max_examples: evaluate the first this many validation digits (None: all; validation records both counts).
    clock: an evaluation.clock.Clock for the estimate and the progress, or None."""
    available = len(x_val)
    if max_examples is not None:
        x_val, y_val = x_val[:max_examples], y_val[:max_examples]
    validation, arrays = metrics.compute_metrics(vae, x_val, k, clock=clock)
    validation["available_examples"] = int(available)
    judged = verdict.diagnose(validation, verdict.verdict_context(vae, steps))
    title = (f"β = {metrics.describe_objective(vae)['effective_beta']:g}: −ELBO {validation['neg_elbo_nats']:.1f} "
             f"nats, I(x; z) {noise.nats_text(validation['mutual_information_nats'])} nats: "
             f"{judged['state'].upper()}")
    write_figures(vae, run_dir, x_val, y_val, arrays, history, title, steps // max(1, len(history)))
    return validation, judged

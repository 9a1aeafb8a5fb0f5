"""What an objective means in words: its formula as a multiple of a β-VAE objective, the start-up line, what
to expect, and the warnings that teach. Read by `train.py --explain` and the start-up lines (no TensorFlow)
and recorded in summary.json under `objective`.
"""

import math
from typing import TYPE_CHECKING

from vae_kl.choices import likelihoods, schedules
from vae_kl.spec import objective

if TYPE_CHECKING:
    from vae_kl.spec import config


def _fraction(scale):
    return "1" if scale == 1 else f"1/{round(1 / scale)}"


def is_elbo_weight(beta: float) -> bool:
    """Whether an effective β is 1 to float precision (a λ of 1/784 written out in full gives 1 ± 2e-16)."""
    return math.isclose(beta, 1.0, rel_tol=1e-9)


def beta_text(beta: float) -> str:
    """β as the lines print it: 4, 784, 0.5; one that is not 1 but prints as 1 at 6 digits gets more of them."""
    text = f"{beta:g}"
    return f"{beta:.10g}" if text == "1" and not is_elbo_weight(beta) else text


def describe(reconstruction_reduction: str, kl_reduction: str, kl_weight: float, latent_dim: int, num_pixels: int,
             likelihood: str = "bernoulli", likelihood_options: dict = None) -> dict:
    """The objective as a multiple of a β-VAE objective. Returns a dict written to summary.json.

    Args:
        kl_weight: the resolved λ (see objective.resolve_kl_weight).
        likelihood, likelihood_options: the likelihood's name and what it read from the config (its
            `options`), for what only it adds (a fixed Gaussian σ's equivalent ELBO).
    """
    rec_scale, kl_scale = objective.scales(reconstruction_reduction, kl_reduction, latent_dim, num_pixels)
    beta = kl_weight * kl_scale / rec_scale
    chosen = likelihoods.FAMILY.get(likelihood)
    formula = f"loss = {_fraction(rec_scale)}·[{chosen.formula} + {beta_text(beta)}·KL]"
    if is_elbo_weight(beta):
        meaning = "the negative ELBO (β = 1)"
    elif beta > 1:
        meaning = f"a β-VAE objective that weights the KL {beta_text(beta)}× more than the ELBO does"
    else:
        meaning = f"a β-VAE objective that weights the KL at {beta_text(beta)}× the ELBO's weight"
    # D = H·W·C pixel values (784 for MNIST, 3,072 for 32×32 RGB) and J: the sizes β_norm = β·J/D uses.
    result = {"formula": formula, "meaning": meaning, "effective_beta": beta,
              "beta_norm": beta * latent_dim / num_pixels, "loss_scale": rec_scale, "kl_weight": kl_weight,
              "num_pixels": int(num_pixels), "latent_dim": int(latent_dim)}
    result.update(chosen.equivalences(likelihood_options or {}, beta))
    return result


def with_goal(description: dict, goal: objective.Objective, likelihood: str) -> dict:
    """describe's dict for an objective whose KL term is not one fixed β·KL: GECO (goal.chooses_beta), whose
    formula names κ and whose β is reported after training; capacity (goal.target_rate), with C and γ; β-TC
    (goal.tc_weight), whose total correlation has a weight of its own. Other objectives: unchanged."""
    nll, scale = likelihoods.FAMILY.get(likelihood).formula, _fraction(description["loss_scale"])
    if goal.chooses_beta:
        formula = (f"loss = {scale}·[{nll} + β·KL], β chosen during training so that {nll} averages "
                   f"κ = {goal.target_distortion:g} nats per example (GECO)")
        return {**description, "formula": formula, "meaning": "the KL minimised subject to a reconstruction of κ",
                "weight_chosen_by": "GECO", "target_distortion": goal.target_distortion}
    if goal.target_rate is not None:
        formula = (f"loss = {scale}·[{nll} + {goal.rate_weight:g}·|KL − C|], C rising to {goal.target_rate:g} "
                   f"nats per example ({goal.kl_schedule} schedule)")
        return {**description, "formula": formula, "meaning": f"a code held at a rate of C = {goal.target_rate:g} "
                f"nats", "weight_chosen_by": "capacity", "target_rate": goal.target_rate,
                "rate_weight": goal.rate_weight}
    if goal.tc_weight is not None:
        beta = description["effective_beta"]
        formula = f"loss = {scale}·[{nll} + {beta:g}·(KL − TC) + {goal.tc_weight:g}·TC]"
        meaning = (f"a β-TC-VAE objective (Chen et al. 2018): the KL's total correlation TC weighted "
                   f"{goal.tc_weight:g}, its other parts {beta:g}")
        return {**description, "formula": formula, "meaning": meaning, "tc_weight": goal.tc_weight,
                "tc_estimator": "minibatch weighted sampling over each training batch"}
    return description


def statement(description: dict, latent_dim: int, num_pixels: int, likelihood: str = "bernoulli") -> str:
    """One human line for start-up: the formula, β and β_norm."""
    if description.get("weight_chosen_by") == "GECO":
        return (f"Objective: {description['formula']}, i.e. {description['meaning']}. β starts at 1; the run "
                f"reports the β it ends with, the fixed λ that gives this distortion.")
    if description.get("weight_chosen_by") == "capacity":
        return (f"Objective: {description['formula']}, i.e. {description['meaning']} (Burgess et al. 2018); the "
                f"run reports the rate it reached and the information the code carries.")
    line = (f"Objective: {description['formula']}, i.e. {description['meaning']}. "
            f"Effective β = {beta_text(description['effective_beta'])}, β_norm = β·J/D = "
            f"{beta_text(description['effective_beta'])}·{latent_dim}/{num_pixels} = {description['beta_norm']:.4g}.")
    return line + likelihoods.FAMILY.get(likelihood).statement(description)


# What to expect, from this project's measurements (3 seeds each; docs/kl_weighting.md): on MNIST with a 2-D
# code every run with β >= 30 collapsed and none with β <= 10 did.
COLLAPSE_BETA = 30.0


def expectation(description: dict, likelihood: str = "bernoulli", likelihood_options: dict = None) -> str:
    """One line saying what a run with this objective should be expected to show, and why."""
    if "tc_weight" in description:
        more = "more" if description["tc_weight"] > description["effective_beta"] else "less"
        return (f"Expect: latent units {more} independent of each other than at β = "
                f"{description['effective_beta']:g} alone (the evaluation reports the KL's three parts); the "
                f"batch's TC estimate reads high once the code carries more than about log(batch size) nats.")
    if description.get("weight_chosen_by") == "capacity":
        return ("Expect: a KL near C; a rate is not information: the code may spend part of C on noise "
                "the decoder ignores, so the information it carries can be lower.")
    if description.get("weight_chosen_by") == "GECO":
        return ("Expect: β holds at 1 until the reconstruction's moving average first reaches κ (or stops "
                "improving), then falls while it is above κ and rises while it is below, until the training "
                "reconstruction settles near κ; a κ below what the model can reach drives β towards 0, one the "
                "decoder meets without a code drives it up and the code collapses. "
                + kappa_advice(likelihood, likelihood_options or {}, description["num_pixels"]))
    beta, latent_dim = description["effective_beta"], description["latent_dim"]
    own = likelihoods.FAMILY.get(likelihood).expectation(likelihood_options or {}, description)
    if own:
        return own
    if is_elbo_weight(beta):
        return "Expect: the ELBO's own balance; how much of the code is used depends on the data and the training."
    if beta < 1:
        return ("Expect: sharper reconstructions than the ELBO and codes that stray from the prior (KL well above "
                "the information), so digits decoded from prior samples look worse; collapse is less likely.")
    measured = " (on MNIST with a 2-D code every seed measured at β >= 30 collapsed)" if latent_dim == 2 else ""
    if beta >= COLLAPSE_BETA:
        return (f"Expect: posterior collapse, every reconstruction the same average digit: β = {beta:g} charges "
                f"{beta:g} nats of reconstruction for each nat of information in a {latent_dim}-D code{measured}.")
    return (f"Expect: a simpler code than the ELBO's, less information in z and blurrier reconstructions; "
            f"collapse becomes likely as β approaches {COLLAPSE_BETA:g}{measured}.")


def kappa_advice(likelihood: str, options: dict, num_pixels: int) -> str:
    """How to pick GECO's κ for this likelihood: from a β = 1 run, within the range its NLL can take."""
    floor = likelihoods.FAMILY.get(likelihood).reconstruction_floor(options, num_pixels)
    where = (f"κ must be above {floor[0]:.6g} ({floor[1]})" if floor is not None else
             "its NLL is a negative log density, which falls below 0 as the fit sharpens, so κ may be 0 or negative")
    return (f"Pick κ from a β = 1 run with the same likelihood and data (its validation reconstruction_nats in "
            f"summary.json): above it buys a smaller KL; {where}.")


def ignored_schedule_settings(loss: "config.LossConfig") -> list[str]:
    """'loss.key value' for each schedule setting changed from its default that loss.kl_schedule does not read."""
    keys = schedules.FAMILY.unread_settings(loss, loss.kl_schedule)
    return [f"loss.{key} {getattr(loss, key)!r}" for key in keys]


def teaching_warnings(loss: "config.LossConfig", goal: objective.Objective, latent_dim: int,
                      num_pixels: int) -> list[str]:
    """One-line warnings for settings that commonly surprise people.

    Args:
        loss: the config's LossConfig (read only).
        goal: the run's Objective (its schedule over the run's steps).
    """
    notes = []
    kl_weight = objective.resolve_kl_weight(loss.kl_weight, loss.kl_weight_norm, loss.reconstruction_reduction,
                                  loss.kl_reduction, latent_dim, num_pixels)
    beta = describe(loss.reconstruction_reduction, loss.kl_reduction, kl_weight, latent_dim,
                    num_pixels)["effective_beta"]
    elbo = elbo_advice(loss.reconstruction_reduction, loss.kl_reduction, latent_dim, num_pixels)
    by_beta = likelihoods.FAMILY.get(loss.likelihood).beta_predicts_collapse  # Not when a σ sets the scale.
    collapses = beta >= COLLAPSE_BETA and by_beta
    weighted = not is_elbo_weight(beta) and loss.kl_weight != "auto" and loss.target_rate is None
    if weighted and loss.reconstruction_reduction == "mean" and loss.kl_reduction == "sum":
        consequence = "; expect posterior collapse (every reconstruction the same image)" if collapses else ""
        notes.append(f"WARNING: the reconstruction is averaged over {num_pixels} pixels but the KL is summed, "
                     f"so the KL counts {beta_text(beta)}× {'more than' if beta > 1 else 'as much as'} in the ELBO"
                     f"{consequence}. {elbo}")
    elif weighted and beta >= 10 and by_beta:
        notes.append(f"WARNING: effective β = {beta_text(beta)}; a latent code this penalised often collapses. "
                     f"{elbo}")
    elif weighted:  # Every β ≠ 1 says which weight is the ELBO's.
        notes.append(f"NOTE: effective β = {beta_text(beta)}, not the ELBO's 1. {elbo}")
    ignored = ignored_schedule_settings(loss)
    if ignored:
        readers = "; ".join(f"{name} reads {', '.join(schedules.FAMILY.reads(name))}"
                            for name in schedules.FAMILY.names() if schedules.FAMILY.reads(name))
        notes.append(f"NOTE: kl_schedule {loss.kl_schedule!r} does not read {', '.join(ignored)}; they have no "
                     f"effect ({readers}).")
    schedule = goal.schedule()
    if schedule.first_full_step() is None:
        notes.append(f"WARNING: kl_schedule '{loss.kl_schedule}' never reaches its final weight within the "
                     f"{goal.total_steps} training steps; {schedule.fix}")
    if loss.free_bits > 0:
        notes.append(f"NOTE: free bits: the objective sees max(KL_j, {loss.free_bits:g}) per dimension; "
                     f"reported KLs are the true ones.")
    return notes


def elbo_advice(reconstruction_reduction: str, kl_reduction: str, latent_dim: int, num_pixels: int) -> str:
    """'β = 1, the ELBO, is loss.kl_weight: λ with these reductions (or ...)': the settings that undo a β."""
    rec_scale, kl_scale = objective.scales(reconstruction_reduction, kl_reduction, latent_dim, num_pixels)
    other = {("mean", "sum"): "loss.reconstruction_reduction: sum", ("sum", "mean"): "loss.kl_reduction: sum",
             ("mean", "mean"): "both reductions sum"}.get((reconstruction_reduction, kl_reduction))
    alternative = f" (or {other} with loss.kl_weight: 1)" if other else ""
    weight = rec_scale / kl_scale
    shown = f"{weight:g}" if float(f"{weight:g}") == weight else repr(weight)  # Applied, β = 1 to float precision.
    fraction = {("mean", "sum"): f"1/{num_pixels}", ("mean", "mean"): f"{latent_dim}/{num_pixels}"}.get(
        (reconstruction_reduction, kl_reduction))
    return (f"β = 1, the ELBO, is loss.kl_weight: {shown}{f' (= {fraction})' if fraction else ''} with these "
            f"reductions{alternative}.")

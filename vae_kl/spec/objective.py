"""What a configured loss means in ELBO terms: effective β, β_norm and warnings that teach.

The training loss per digit is rec_scale·Σ_pixels NLL + λ·kl_scale·Σ_j KL_j
(losses.training_objective). Factoring out rec_scale gives
rec_scale·[Σ NLL + β·KL] with β = λ·kl_scale/rec_scale. Gradient descent does
not care about the overall positive factor rec_scale (Adam almost entirely
ignores it), so the run optimises a β-VAE objective with this β. β = 1 is the
ELBO (Kingma & Welling 2014); β_norm = β·J/D is the normalised β of Higgins
et al. (2017), with J latent dimensions and D = H·W·C pixel values.
"""

import dataclasses
import math
from typing import Optional

from vae_kl.choices import (
    likelihoods,  # TensorFlow-free at import, like this module: `train.py --explain` describes without it.
    registry,
    schedules,
)
from vae_kl.spec import config

losses = registry.Deferred("losses")  # losses.py loads Keras: only a training computes the loss.


@dataclasses.dataclass(frozen=True)
class Objective:
    """The training objective, passed to `VAE.compile(objective=...)`: how the per-digit terms are
    reduced and weighted, and how the KL weight moves during training.

    Per digit: rec_scale·Σ_pixels NLL + λ·m(step)·kl_scale·Σ_j KL_j (losses.training_objective),
    with m the schedule's multiplier (schedules.kl_multiplier) and free bits applied per dimension.
    kl_weight is the resolved λ (resolve_kl_weight). Steps count gradient steps from 0.
    """

    reconstruction_reduction: str = "sum"
    kl_reduction: str = "sum"
    kl_weight: float = 1.0
    free_bits: float = 0.0
    kl_schedule: str = "constant"
    warmup_steps: int = 0
    total_steps: int = 1
    kl_cycles: int = 1
    kl_ramp_ratio: float = 0.5
    # GECO (loss.kl_weight: auto): κ in summed nats per example, and how its multiplier moves. With κ set,
    # the VAE's controller (model.VAE.geco_step) chooses β each step and kl_weight is only its start, β = 1;
    # geco_patience: steps without progress before a multiplier held at its start is released (0: never held).
    target_distortion: Optional[float] = None
    geco_rate: float = 0.2
    geco_smoothing: float = 0.95
    geco_patience: int = 500
    # Capacity (loss.target_rate): C in summed nats per example, reached through the schedule's ramp, and γ.
    target_rate: Optional[float] = None
    rate_weight: float = 1000.0
    # β-TC (loss.tc_weight): the effective weight of the KL's total correlation, on β's scale; None: off.
    tc_weight: Optional[float] = None

    @classmethod
    def from_config(cls, loss_cfg, latent_dim, num_pixels, steps_per_epoch, epochs):
        """The objective a config's loss section describes, for a run of epochs × steps_per_epoch steps."""
        per_unit = steps_per_epoch if loss_cfg.kl_warmup_unit == "epochs" else 1
        weight = resolve_kl_weight(loss_cfg.kl_weight, loss_cfg.kl_weight_norm, loss_cfg.reconstruction_reduction,
                                   loss_cfg.kl_reduction, latent_dim, num_pixels)
        return cls(loss_cfg.reconstruction_reduction, loss_cfg.kl_reduction, weight, loss_cfg.free_bits,
                   loss_cfg.kl_schedule, loss_cfg.kl_warmup * per_unit, steps_per_epoch * epochs,
                   loss_cfg.kl_cycles, loss_cfg.kl_ramp_ratio, loss_cfg.target_distortion, loss_cfg.geco_rate,
                   loss_cfg.geco_smoothing, loss_cfg.geco_patience, loss_cfg.target_rate, loss_cfg.rate_weight,
                   loss_cfg.tc_weight)

    def multiplier(self, step):
        """The schedule's multiplier m(step) in [0, 1] (a scalar, or an array of steps)."""
        return schedules.kl_multiplier(step, self.kl_schedule, self.warmup_steps, self.total_steps, self.kl_cycles,
                                       self.kl_ramp_ratio)

    def rate_at(self, step):
        """The capacity C in force at `step`: target_rate times the schedule's multiplier (its ramp)."""
        return self.target_rate * self.multiplier(step)

    @property
    def chooses_beta(self):
        """Whether β is chosen during training (GECO) rather than fixed by kl_weight and the schedule."""
        return self.target_distortion is not None

    def kl_weight_for_beta(self, beta, latent_dim, num_pixels):
        """The λ that gives effective β = beta with this objective's reductions."""
        rec_scale, kl_scale = scales(self.reconstruction_reduction, self.kl_reduction, latent_dim, num_pixels)
        return beta * rec_scale / kl_scale

    def kl_weight_at(self, step):
        """λ times the schedule's multiplier at `step` (a scalar or an array of steps)."""
        return self.kl_weight * self.multiplier(step)

    def tc_coefficient(self, step, latent_dim, num_pixels):
        """What multiplies the batch's total correlation estimate in the loss (tc_weight): the loss is
        rec_scale·[Σ NLL + β·(KL - TC) + tc_weight·TC], both weights times the schedule's multiplier, so the
        estimate enters as m(step)·(rec_scale·tc_weight - λ·kl_scale)·TC."""
        rec_scale, kl_scale = scales(self.reconstruction_reduction, self.kl_reduction, latent_dim, num_pixels)
        return self.multiplier(step) * (rec_scale * self.tc_weight - self.kl_weight * kl_scale)

    def loss(self, reconstruction, kl_terms, num_pixels, latent_dim, step, batch_mean=None, beta=None, tc=None):
        """The batch's training loss (a scalar) from reconstruction (batch,) and KL terms (batch, K);
        batch_mean averages over the global batch (default: losses.batch_average; see losses.training_objective);
        beta: the effective β GECO chose for this step (chooses_beta), else None for the configured weight;
        tc: the batch's total correlation estimate (losses.total_correlation), read when tc_weight is set."""
        if self.target_rate is not None:
            return losses.capacity_objective(reconstruction, kl_terms, num_pixels,
                                             self.reconstruction_reduction, self.rate_at(step), self.rate_weight,
                                             batch_mean or losses.batch_average)
        weight = self.kl_weight_at(step) if beta is None else self.kl_weight_for_beta(beta, latent_dim, num_pixels)
        loss = losses.training_objective(reconstruction, kl_terms, num_pixels, latent_dim,
                                         self.reconstruction_reduction, self.kl_reduction, weight,
                                         self.free_bits, batch_mean or losses.batch_average)
        if self.tc_weight is None:
            return loss
        return loss + self.tc_coefficient(step, latent_dim, num_pixels) * tc


def scales(reconstruction_reduction, kl_reduction, latent_dim, num_pixels):
    """(rec_scale, kl_scale): 1 for a sum, 1/D or 1/J for a mean."""
    rec_scale = 1.0 / num_pixels if reconstruction_reduction == "mean" else 1.0
    kl_scale = 1.0 / latent_dim if kl_reduction == "mean" else 1.0
    return rec_scale, kl_scale


def resolve_kl_weight(kl_weight, kl_weight_norm, reconstruction_reduction, kl_reduction, latent_dim, num_pixels):
    """The λ to put on the KL term: kl_weight as given, the λ that makes β = β_norm·D/J, or for kl_weight
    "auto" (GECO) the λ of its first step, β = 1."""
    if kl_weight_norm is None and kl_weight != "auto":
        return 1.0 if kl_weight is None else float(kl_weight)
    rec_scale, kl_scale = scales(reconstruction_reduction, kl_reduction, latent_dim, num_pixels)
    beta = 1.0 if kl_weight == "auto" else kl_weight_norm * num_pixels / latent_dim
    return beta * rec_scale / kl_scale


def _fraction(scale):
    return "1" if scale == 1 else f"1/{round(1 / scale)}"


def describe(reconstruction_reduction, kl_reduction, kl_weight, latent_dim, num_pixels,
             likelihood="bernoulli", gaussian_sigma=None):
    """The objective as a multiple of a β-VAE objective. Returns a dict written to summary.json.

    Args:
        kl_weight: the resolved λ (see resolve_kl_weight).
        gaussian_sigma: a fixed σ (float) for the SSE-equivalent β, else None.
    """
    rec_scale, kl_scale = scales(reconstruction_reduction, kl_reduction, latent_dim, num_pixels)
    beta = kl_weight * kl_scale / rec_scale
    chosen = likelihoods.FAMILY.get(likelihood)
    formula = f"loss = {_fraction(rec_scale)}·[{chosen.formula} + {beta:g}·KL]"
    if math.isclose(beta, 1.0):
        meaning = "the negative ELBO (β = 1)"
    elif beta > 1:
        meaning = f"a β-VAE objective that weights the KL {beta:g}× more than the ELBO does"
    else:
        meaning = f"a β-VAE objective that weights the KL at {beta:g}× the ELBO's weight"
    # D = H·W·C pixel values (784 for MNIST, 3,072 for 32×32 RGB) and J: the sizes β_norm = β·J/D uses.
    result = {"formula": formula, "meaning": meaning, "effective_beta": beta,
              "beta_norm": beta * latent_dim / num_pixels, "loss_scale": rec_scale, "kl_weight": kl_weight,
              "num_pixels": int(num_pixels), "latent_dim": int(latent_dim)}
    if chosen.has_sigma and isinstance(gaussian_sigma, (int, float)):
        # SSE/(2σ²) + β·KL = (1/(2σ²))·[SSE + 2σ²β·KL] up to a constant: the ELBO (β = 1) of σ' = σ·√β.
        result["sse_equivalent_beta"] = 2.0 * gaussian_sigma ** 2 * beta
        result["equivalent_sigma"] = gaussian_sigma * math.sqrt(beta)
    return result


def with_goal(description, goal, likelihood):
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


def statement(description, latent_dim, num_pixels):
    """One human line for start-up: the formula, β and β_norm."""
    if description.get("weight_chosen_by") == "GECO":
        return (f"Objective: {description['formula']}, i.e. {description['meaning']}. β starts at 1; the run "
                f"reports the β it ends with, the fixed λ that gives this distortion.")
    if description.get("weight_chosen_by") == "capacity":
        return (f"Objective: {description['formula']}, i.e. {description['meaning']} (Burgess et al. 2018); the "
                f"run reports the rate it reached and the information the code carries.")
    line = (f"Objective: {description['formula']}, i.e. {description['meaning']}. "
            f"Effective β = {description['effective_beta']:g}, β_norm = β·J/D = "
            f"{description['effective_beta']:g}·{latent_dim}/{num_pixels} = {description['beta_norm']:.4g}.")
    if "sse_equivalent_beta" in description:
        line += (f" With fixed σ this is plain SSE + {description['sse_equivalent_beta']:.4g}·KL up to a constant: "
                 f"the ELBO (β = 1) of a Gaussian decoder with σ = {description['equivalent_sigma']:.4g}.")
    return line


# What to expect, from this project's measurements (3 seeds each; docs/kl_weighting.md): on MNIST with a 2-D
# code every run with β >= 30 collapsed and none with β <= 10 did; a fixed Gaussian σ' above about 0.3
# treats most of a digit as noise (evaluate.LARGE_FIXED_SIGMA).
COLLAPSE_BETA, BLURRY_SIGMA = 30.0, 0.3


def expectation(description, likelihood="bernoulli", gaussian_sigma=None):
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
        return ("Expect: β holds at 1 until the reconstruction first reaches κ (or stops improving), then falls "
                "while it is above κ and rises while it is below, until the training reconstruction settles near "
                "κ; a κ below what the model can reach drives β towards 0.")
    beta, latent_dim = description["effective_beta"], description["latent_dim"]
    if likelihoods.FAMILY.get(likelihood).has_sigma and not isinstance(gaussian_sigma, (int, float)):
        return (f"Expect: the data choose σ ({gaussian_sigma}), and σ² is the KL's weight against the summed "
                f"squared error, so the balance adapts (Rybkin et al. 2021); β = {beta:g} multiplies it.")
    if "equivalent_sigma" in description:
        sigma = description["equivalent_sigma"]
        if sigma > BLURRY_SIGMA:
            return (f"Expect: blurry reconstructions or posterior collapse: a Gaussian decoder with σ = {sigma:.3g} "
                    f"treats most of a digit in [0, 1] as noise, so the code has little to explain.")
        return f"Expect: a code in use; σ = {sigma:.3g} is the noise the decoder assumes, so smaller is sharper."
    if math.isclose(beta, 1.0):
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


def ignored_schedule_settings(loss):
    """'loss.key value' for each schedule setting changed from its default that loss.kl_schedule does not read."""
    keys = schedules.FAMILY.unread_settings(loss, config.LossConfig(), loss.kl_schedule)
    return [f"loss.{key} {getattr(loss, key)!r}" for key in keys]


def teaching_warnings(loss, binarize, latent_dim, num_pixels, total_steps, warmup_steps):
    """One-line warnings for settings that commonly surprise people.

    Args:
        loss: the config's LossConfig (read only).
        binarize: data.binarize (kept for callers; grey-level BCE needs no warning, docs/evaluation.md).
        total_steps, warmup_steps: the run's length and the schedule's warm-up, in steps.
    """
    notes = []
    kl_weight = resolve_kl_weight(loss.kl_weight, loss.kl_weight_norm, loss.reconstruction_reduction,
                                  loss.kl_reduction, latent_dim, num_pixels)
    beta = describe(loss.reconstruction_reduction, loss.kl_reduction, kl_weight, latent_dim,
                    num_pixels)["effective_beta"]
    elbo = elbo_advice(loss.reconstruction_reduction, loss.kl_reduction, latent_dim, num_pixels)
    scaled_by_sigma = likelihoods.FAMILY.get(loss.likelihood).has_sigma  # Its σ sets the scale (expectation).
    collapses = beta >= COLLAPSE_BETA and not scaled_by_sigma
    if loss.reconstruction_reduction == "mean" and loss.kl_reduction == "sum":
        consequence = "; expect posterior collapse (every reconstruction the same image)" if collapses else ""
        notes.append(f"WARNING: the reconstruction is averaged over {num_pixels} pixels but the KL is summed, "
                     f"so the KL counts {beta:g}× more than in the ELBO{consequence}. {elbo}")
    elif beta >= 10 and not scaled_by_sigma:
        notes.append(f"WARNING: effective β = {beta:g}; a latent code this penalised often collapses. {elbo}")
    ignored = ignored_schedule_settings(loss)
    if ignored:
        readers = "; ".join(f"{name} reads {', '.join(cls.settings_read)}"
                            for name, cls in schedules.FAMILY.choices.items() if cls.settings_read)
        notes.append(f"NOTE: kl_schedule {loss.kl_schedule!r} does not read {', '.join(ignored)}; they have no "
                     f"effect ({readers}).")
    schedule = schedules.get(loss.kl_schedule, warmup_steps, total_steps, loss.kl_cycles, loss.kl_ramp_ratio)
    if schedule.first_full_step() is None:
        notes.append(f"WARNING: kl_schedule '{loss.kl_schedule}' never reaches its final weight within the "
                     f"{total_steps} training steps; {schedule.fix}")
    if loss.free_bits > 0:
        notes.append(f"NOTE: free bits: the objective sees max(KL_j, {loss.free_bits:g}) per dimension; "
                     f"reported KLs are the true ones.")
    return notes


def elbo_advice(reconstruction_reduction, kl_reduction, latent_dim, num_pixels):
    """'β = 1, the ELBO, is loss.kl_weight: λ with these reductions (or ...)': the settings that undo a β."""
    rec_scale, kl_scale = scales(reconstruction_reduction, kl_reduction, latent_dim, num_pixels)
    other = {("mean", "sum"): "loss.reconstruction_reduction: sum", ("sum", "mean"): "loss.kl_reduction: sum",
             ("mean", "mean"): "both reductions sum"}.get((reconstruction_reduction, kl_reduction))
    alternative = f" (or {other} with loss.kl_weight: 1)" if other else ""
    return f"β = 1, the ELBO, is loss.kl_weight: {rec_scale / kl_scale:.6g} with these reductions{alternative}."

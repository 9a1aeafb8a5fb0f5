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

import schedules  # TensorFlow-free at import, like this module: `train.py --explain` describes without it.


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

    @classmethod
    def from_config(cls, loss_cfg, latent_dim, num_pixels, steps_per_epoch, epochs):
        """The objective a config's loss section describes, for a run of epochs × steps_per_epoch steps."""
        per_unit = steps_per_epoch if loss_cfg.kl_warmup_unit == "epochs" else 1
        weight = resolve_kl_weight(loss_cfg.kl_weight, loss_cfg.kl_weight_norm, loss_cfg.reconstruction_reduction,
                                   loss_cfg.kl_reduction, latent_dim, num_pixels)
        return cls(loss_cfg.reconstruction_reduction, loss_cfg.kl_reduction, weight, loss_cfg.free_bits,
                   loss_cfg.kl_schedule, loss_cfg.kl_warmup * per_unit, steps_per_epoch * epochs,
                   loss_cfg.kl_cycles, loss_cfg.kl_ramp_ratio)

    def kl_weight_at(self, step):
        """λ times the schedule's multiplier at `step` (a scalar or an array of steps)."""
        return self.kl_weight * schedules.kl_multiplier(step, self.kl_schedule, self.warmup_steps, self.total_steps,
                                                        self.kl_cycles, self.kl_ramp_ratio)

    def loss(self, reconstruction, kl_terms, num_pixels, latent_dim, step, batch_mean=None):
        """The batch's training loss (a scalar) from reconstruction (batch,) and KL terms (batch, K);
        batch_mean averages over the global batch (default: losses.batch_average; see losses.training_objective)."""
        import losses  # Here, not at the top: losses.py loads Keras, and --explain must not.

        return losses.training_objective(reconstruction, kl_terms, num_pixels, latent_dim,
                                         self.reconstruction_reduction, self.kl_reduction, self.kl_weight_at(step),
                                         self.free_bits, batch_mean or losses.batch_average)


def scales(reconstruction_reduction, kl_reduction, latent_dim, num_pixels):
    """(rec_scale, kl_scale): 1 for a sum, 1/D or 1/J for a mean."""
    rec_scale = 1.0 / num_pixels if reconstruction_reduction == "mean" else 1.0
    kl_scale = 1.0 / latent_dim if kl_reduction == "mean" else 1.0
    return rec_scale, kl_scale


def resolve_kl_weight(kl_weight, kl_weight_norm, reconstruction_reduction, kl_reduction, latent_dim, num_pixels):
    """The λ to put on the KL term: kl_weight as given, or the λ that makes β = β_norm·D/J."""
    if kl_weight_norm is None:
        return 1.0 if kl_weight is None else float(kl_weight)
    rec_scale, kl_scale = scales(reconstruction_reduction, kl_reduction, latent_dim, num_pixels)
    beta = kl_weight_norm * num_pixels / latent_dim
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
    nll = {"bernoulli": "Σ BCE", "gaussian": "Σ Gaussian NLL", "continuous_bernoulli": "Σ CB NLL"}[likelihood]
    formula = f"loss = {_fraction(rec_scale)}·[{nll} + {beta:g}·KL]"
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
    if likelihood == "gaussian" and isinstance(gaussian_sigma, (int, float)):
        # SSE/(2σ²) + β·KL = (1/(2σ²))·[SSE + 2σ²β·KL] up to a constant: the ELBO (β = 1) of σ' = σ·√β.
        result["sse_equivalent_beta"] = 2.0 * gaussian_sigma ** 2 * beta
        result["equivalent_sigma"] = gaussian_sigma * math.sqrt(beta)
    return result


def statement(description, latent_dim, num_pixels):
    """One human line for start-up: the formula, β and β_norm."""
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
    beta, latent_dim = description["effective_beta"], description["latent_dim"]
    if likelihood == "gaussian" and not isinstance(gaussian_sigma, (int, float)):
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
    import config  # Below objective in the layering; imported here only for the defaults.

    defaults, reads = config.LossConfig(), schedules.SETTINGS_READ[loss.kl_schedule]
    return [f"loss.{key} {getattr(loss, key)!r}" for key in schedules.SCHEDULE_SETTINGS
            if key not in reads and getattr(loss, key) != getattr(defaults, key)]


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
    collapses = beta >= COLLAPSE_BETA and loss.likelihood != "gaussian"  # A Gaussian's scale is its σ (expectation).
    if loss.reconstruction_reduction == "mean" and loss.kl_reduction == "sum":
        consequence = "; expect posterior collapse (every reconstruction the same image)" if collapses else ""
        notes.append(f"WARNING: the reconstruction is averaged over {num_pixels} pixels but the KL is summed, "
                     f"so the KL counts {beta:g}× more than in the ELBO{consequence}. {elbo}")
    elif beta >= 10 and loss.likelihood != "gaussian":
        notes.append(f"WARNING: effective β = {beta:g}; a latent code this penalised often collapses. {elbo}")
    ignored = ignored_schedule_settings(loss)
    if ignored:
        notes.append(f"NOTE: kl_schedule {loss.kl_schedule!r} does not read {', '.join(ignored)}; they have no "
                     f"effect (linear and sigmoid read kl_warmup and kl_warmup_unit, cyclical kl_cycles and "
                     f"kl_ramp_ratio).")
    full = schedules.first_full_weight_step(loss.kl_schedule, warmup_steps, total_steps, loss.kl_cycles,
                                            loss.kl_ramp_ratio)
    if full is None:
        notes.append(f"WARNING: kl_schedule '{loss.kl_schedule}' never reaches its final weight within the "
                     f"{total_steps} training steps; {_schedule_fix(loss.kl_schedule)}")
    if loss.free_bits > 0:
        notes.append(f"NOTE: free bits: the objective sees max(KL_j, {loss.free_bits:g}) per dimension; "
                     f"reported KLs are the true ones.")
    return notes


def _schedule_fix(schedule):
    if schedule == "cyclical":
        return "lower kl_ramp_ratio or kl_cycles (each cycle must have a step past its ramp)."
    return "lengthen training or shorten kl_warmup."


def elbo_advice(reconstruction_reduction, kl_reduction, latent_dim, num_pixels):
    """'β = 1, the ELBO, is loss.kl_weight: λ with these reductions (or ...)': the settings that undo a β."""
    rec_scale, kl_scale = scales(reconstruction_reduction, kl_reduction, latent_dim, num_pixels)
    other = {("mean", "sum"): "loss.reconstruction_reduction: sum", ("sum", "mean"): "loss.kl_reduction: sum",
             ("mean", "mean"): "both reductions sum"}.get((reconstruction_reduction, kl_reduction))
    alternative = f" (or {other} with loss.kl_weight: 1)" if other else ""
    return f"β = 1, the ELBO, is loss.kl_weight: {rec_scale / kl_scale:.6g} with these reductions{alternative}."

"""The collapse verdict: healthy, partial or collapsed, the numbers behind it in words, and the next step.
"""


from typing import Any

from vae_kl.choices import likelihoods
from vae_kl.evaluation import information, metrics
from vae_kl.evaluation.noise import estimate_text, nats_text
from vae_kl.spec import meaning

COLLAPSED_BELOW_NATS = 0.2  # A code with less information than this tells the decoder almost nothing.
FEW_STEPS = 2000  # Fewer gradient steps than this: a collapsed β <= 1 run is likelier undertrained than stuck.
# Collapsed when the decoder gains less than this from a digit's own code over another digit's (decoder_use,
# nats per digit), however much the code carries. A decoder equal to the true p(x|z) of the encoder's joint
# gains I(x; z) plus the lautum information, so at least I(x; z): a code worth COLLAPSED_BELOW_NATS that reaches
# the reconstructions gains at least as much. Measured on the embedded digits (1,000 validation digits): the
# tutorial's model after 4 epochs gains 36.7 ± 1.9 nats with I(x; z) = 1.40; with its first Dense kernel zeroed,
# exactly 0 (every code decodes to the same image); a code with no information fed to a decoder that does read z,
# -0.3 ± 0.3 (300 digits): the threshold sits above that noise and far below any decoder that reads its code.
DECODER_USE_BELOW_NATS = 0.2
STATES = ("healthy", "partial", "collapsed")



def diagnose(validation: dict, context: dict) -> dict:
    """The verdict: state (healthy, partial, collapsed), the numbers in words and the next step.

    Collapse is decided by information, not by the KL or the scale of z: a code with less than
    COLLAPSED_BELOW_NATS of I(x; z) is collapsed whatever its KL (a KL can be large while the code
    says nothing, when the aggregate posterior drifts from the prior). A code that carries more is
    collapsed too when the decoder ignores it: its reconstructions gain less than DECODER_USE_BELOW_NATS
    from the digit's own code over another digit's (validation decoder_use_nats; `decoder_ignores_code`
    true). Partial: some units carry less than INFORMATIVE_UNIT_NATS. Healthy: every unit does.

    Args:
        validation: compute_metrics' numbers (without decoder_use_nats, as before it existed, the decoder
            is not judged).
        context: what the verdict's advice needs: effective_beta, kl_weight, reconstruction_reduction,
            kl_reduction, num_pixels, likelihood and likelihood_options (what the likelihood read from the
            config) and steps (gradient steps trained).
    """
    per_unit = validation["information_per_unit_nats"]
    latent_dim, total = len(per_unit), validation["mutual_information_nats"]
    informative = int(sum(value >= information.INFORMATIVE_UNIT_NATS for value in per_unit))
    spread, use = validation["reconstruction_spread"], validation.get("decoder_use_nats")
    ignored = total >= COLLAPSED_BELOW_NATS and use is not None and use < DECODER_USE_BELOW_NATS
    total_se, use_se = validation.get("mutual_information_se_nats"), validation.get("decoder_use_se_nats")
    numbers = (f"I(x; z) = {estimate_text(total, total_se)} nats (this estimate shows at most log N = "
               f"{validation['mutual_information_cap_nats']:.2f}); {informative}/{latent_dim} units carry at "
               f"least {information.INFORMATIVE_UNIT_NATS:g} nats; KL {nats_text(validation['kl_nats'])} nats = "
               f"{nats_text(total)} of "
               f"information + {nats_text(validation['marginal_kl_nats'])} of mismatch between the codes' overall "
               f"distribution and the prior; reconstructions vary {spread:.1%} as much as the inputs"
               + ("" if use is None else f"; a digit's own code saves {estimate_text(use, use_se)} nats of "
                                         f"reconstruction over another digit's"))
    if total < COLLAPSED_BELOW_NATS:
        state = "collapsed"
        consequence = ("every reconstruction is nearly the same image" if spread < 0.1 else
                       "the reconstructions of posterior means still differ, but by less than the posterior noise, "
                       "so a sampled code tells the decoder almost nothing about the digit")
        reason = f"posterior collapse: the latent code carries almost no information about the digit ({numbers}); " \
                 f"{consequence}."
    elif ignored:
        state = "collapsed"
        reason = (f"the decoder ignores the code: z carries information about the digit, but decoding another "
                  f"digit's code costs less than {DECODER_USE_BELOW_NATS:g} nats more than its own ({numbers}), so "
                  f"the information does not reach the reconstructions.")
    elif informative < latent_dim:
        state = "partial"
        reason = (f"partial use of the code: {latent_dim - informative} of {latent_dim} latent units carry less than "
                  f"{information.INFORMATIVE_UNIT_NATS:g} nats each ({numbers}).")
    else:
        state = "healthy"
        reason = f"healthy: every latent unit carries information ({numbers})."
    return {"state": state, "detected": state == "collapsed", "informative_units": informative,
            "decoder_ignores_code": ignored, "reason": reason,
            "advice": advice(state, informative, latent_dim, context, decoder_ignores=ignored)}




def advice(state: str, informative: int, latent_dim: int, context: dict, decoder_ignores: bool = False) -> str:
    """The next step for a verdict, naming the setting and the value to try (decoder_ignores: diagnose found a
    code with information that the decoder does not use)."""
    if state == "healthy":
        return "Nothing to change: every unit of the code is in use."
    if decoder_ignores:
        return ("Check the decoder's weights: the encoder's code carries information but the reconstructions do "
                "not depend on it, which training seldom leaves behind; a decoder whose layer reading z (its first "
                "Dense layer) was altered, zeroed or not restored does exactly this, so restore model.keras from "
                f"the run or retrain. If the weights are as trained, train longer ({context['steps']} gradient "
                "steps so far) so that the decoder learns to read z.")
    beta = context["effective_beta"]
    if beta > 1 + 1e-9:
        elbo = meaning.elbo_advice(context["reconstruction_reduction"], context["kl_reduction"], latent_dim,
                                     context["num_pixels"])
        return f"Lower β: effective β = {beta:g} charges {beta:g} nats of reconstruction for every nat of " \
               f"information in z. {elbo}"
    own = likelihoods.FAMILY.get(context["likelihood"]).collapse_advice(context.get("likelihood_options", {}), beta)
    if state == "collapsed" and own:
        return own
    if state == "collapsed" and (context.get("geco_beta") or 0) > 1:
        return (f"Lower κ (loss.target_distortion, now {context['target_distortion']:g}): GECO raised β to "
                f"{context['geco_beta']:.3g} because the reconstruction stayed below κ, and a code that carries "
                f"nothing met it: κ asks for no more than the decoder reaches without the code. A β = 1 run's "
                f"validation reconstruction_nats is a κ the code has to work for.")
    if state == "collapsed" and context["steps"] < FEW_STEPS:
        return (f"Train longer: only {context['steps']} gradient steps so far (the tutorial takes about 16,400). "
                f"Raise train.epochs or use more digits.")
    if state == "collapsed" and context.get("target_rate") is not None:
        ramp = ("ramp C up from 0 instead (loss.kl_schedule: linear, loss.kl_warmup: 10)" if
                context.get("kl_schedule") == "constant" else "ramp C up more slowly (a larger loss.kl_warmup)")
        return (f"The KL meets C = {context['target_rate']:g} nats with a mismatch between the codes and the prior "
                f"rather than with information about the digit: {ramp}, as Burgess et al. grow C during training, "
                f"so that the decoder learns to read z while its capacity is small.")
    if state == "collapsed":
        return ("Try KL annealing (loss.kl_schedule: linear, loss.kl_warmup: 10) or free bits (loss.free_bits: 0.5): "
                "both let the encoder start using z before the KL's cost bites.")
    return (f"Nothing is needed if {informative} unit(s) are enough for you. To make all {latent_dim} carry "
            f"information, try free bits (loss.free_bits: 0.5, nats per unit) or KL annealing (loss.kl_schedule: "
            f"linear, loss.kl_warmup: 10).")


def verdict_context(vae: Any, steps: int) -> dict:
    """diagnose's context for a model: its objective's β and λ, its likelihood, and the steps trained."""
    description = metrics.describe_objective(vae)
    return {"effective_beta": description["effective_beta"], "kl_weight": vae.objective.kl_weight,
            "reconstruction_reduction": vae.objective.reconstruction_reduction,
            "kl_reduction": vae.objective.kl_reduction, "num_pixels": vae.num_pixels,
            "likelihood": vae.likelihood.name_in_config, "steps": int(steps),
            "target_rate": vae.objective.target_rate, "target_distortion": vae.objective.target_distortion,
            "geco_beta": float(vae.geco.beta()) if vae.objective.chooses_beta else None,
            "kl_schedule": vae.objective.kl_schedule,
            "likelihood_options": vae.likelihood.config_options()}

"""Every validation number a run reports (summary.json's `validation`), computed from the model and its
validation digits: the β = 1 ELBO and its terms, the IWAE bound, the information the code carries, the KL's
parts, and how much the decoder uses the code.
"""

import math
from typing import TYPE_CHECKING, Any, Optional

import numpy as np

from vae_kl.evaluation import bounds, codes, information
from vae_kl.spec import meaning

if TYPE_CHECKING:
    from vae_kl.evaluation.clock import Clock


def describe_objective(vae: Any) -> dict:
    """meaning.describe for a model's own objective, likelihood and sizes."""
    goal = vae.objective
    return meaning.describe(goal.reconstruction_reduction, goal.kl_reduction, goal.kl_weight, vae.latent_dim,
                            vae.num_pixels, vae.likelihood.name_in_config, vae.likelihood.config_options())


def compute_metrics(vae: Any, x: np.ndarray, k: int, seed: int = bounds.EVAL_SEED,
                    clock: Optional["Clock"] = None) -> tuple[dict, dict]:
    """Every validation number summary.json reports, plus arrays the figures need.

    Besides the ELBO's terms, the IWAE bound and code_use's numbers: `decoder_use_nats`, how many nats of
    reconstruction a digit's own code saves over another digit's (decoder_use; about 0 when the decoder ignores
    z, whatever the code carries), and `decoder_use_se_nats`, its standard error over the digits (both None for
    a single digit). clock: a clock.Clock to say how long it will take and how far it is, or None."""
    z_mean, z_log_var = codes.encode(vae, x)
    log_sigma = bounds.evaluation_log_sigma(vae, x, z_mean)
    if clock is not None:
        seconds, measured = bounds.seconds_per_code(vae, x, z_mean, z_log_var, k, log_sigma)
        clock.calibrate(seconds, f"timed on {measured:,} codes")
    progress = None if clock is None else clock.advance
    reconstruction, iwae, kl_estimate = bounds.importance_bounds(vae, x, z_mean, z_log_var, k, log_sigma, seed,
                                                                 progress)
    if vae.prior.closed_form_kl:
        kl_per_dim = np.asarray(vae.prior.kl(z_mean.astype("float64"), z_log_var.astype("float64"), None)).mean(axis=0)
        kl, kl_estimator = float(kl_per_dim.sum()), "closed form"
    else:
        kl_per_dim, kl, kl_estimator = None, float(kl_estimate.mean()), f"Monte Carlo, mean over k = {k} samples"
    recons = vae.decode(z_mean[:codes.DECODE_BATCH]).numpy()
    use, use_se = bounds.decoder_use(vae, x, z_mean, z_log_var, log_sigma, seed, progress)
    if clock is not None:
        clock.finish()
    neg_elbo = float(reconstruction.mean()) + kl
    pixels = int(np.prod(x.shape[1:]))
    validation = {
        "examples": int(len(x)), "neg_elbo_nats": neg_elbo,
        "neg_elbo_bits_per_dim": neg_elbo / (pixels * math.log(2)),
        "reconstruction_nats": float(reconstruction.mean()), "kl_nats": kl, "kl_estimator": kl_estimator,
        "kl_per_dim_nats": None if kl_per_dim is None else kl_per_dim.tolist(),
        "iwae_nll_nats": float(-iwae.mean()), "iwae_nll_bits_per_dim": float(-iwae.mean()) / (pixels * math.log(2)),
        "iwae_k": int(k), **information.code_use(z_mean, z_log_var, kl, seed, vae.prior.kl_per_dimension),
        "reconstruction_spread": reconstruction_spread(x[:codes.DECODE_BATCH], recons), "prior": vae.prior.describe(),
        "decoder_use_nats": use, "decoder_use_se_nats": use_se,
    }
    if log_sigma is not None:
        validation["gaussian_sigma"] = math.exp(log_sigma)
    active = np.asarray(validation["posterior_mean_variance"]) > information.ACTIVE_UNIT_THRESHOLD
    arrays = {"z_mean": z_mean, "active": active, "kl_per_dim": kl_per_dim,
              "information": np.asarray(validation["information_per_unit_nats"])}
    return validation, arrays


def reconstruction_spread(x: np.ndarray, recons: np.ndarray) -> float:
    """How much reconstructions differ from each other, relative to how much the inputs do.

    The ratio of total per-pixel variance across digits; 0 when every reconstruction is the same
    image. It stays below 1 even for a perfect model of grey levels when the inputs are binary
    (about 0.78 on binarized MNIST), and a blurry but healthy model also scores well below 1.
    """
    spread_in = np.var(x.reshape(len(x), -1), axis=0).sum()
    spread_out = np.var(recons.reshape(len(recons), -1), axis=0).sum()
    return float(spread_out / max(spread_in, 1e-12))

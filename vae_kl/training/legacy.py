"""Models saved by earlier versions keep loading.

A version-1 model.keras (before the VAE had four parts: encoder, decoder, likelihood, prior) stored the
objective's settings in the VAE's config and the Gaussian's learned log σ as the VAE's own variable. A
version-3 file holds two GECO variables, before its hold existed. tests/fixtures holds such files, and
tests/test_model.py and tests/test_targets.py load them.
"""

import dataclasses

from vae_kl.choices import likelihoods, priors
from vae_kl.choices.architectures import build_decoder, build_encoder
from vae_kl.spec.config import LossConfig
from vae_kl.spec.objective import Objective

# The settings a version-1 VAE (before the four-part design) stored in its config.
VERSION_1_KEYS = ("latent_dim", "likelihood", "reconstruction_reduction", "kl_reduction", "kl_weight", "free_bits",
                   "gaussian_sigma", "kl_schedule", "warmup_steps", "total_steps", "kl_cycles", "kl_ramp_ratio",
                   "dynamic_binarize", "seed", "fast_layers", "batch_shards")


def from_version_1_config(cls, config):
    """Rebuild a model saved before the four-part design: the same layers (so the weights load), the
    standard normal prior it was trained with, and its objective (used if it is compiled again)."""
    old = {key: config.pop(key) for key in VERSION_1_KEYS if key in config}
    latent_dim, seed = old.get("latent_dim", 2), old.get("seed")
    likelihood = likelihoods.build(LossConfig(likelihood=old.get("likelihood", "bernoulli"),
                                              gaussian_sigma=old.get("gaussian_sigma", "learned")))
    vae = cls(build_encoder(latent_dim, seed=seed), build_decoder(latent_dim, old.get("fast_layers", False)),
              likelihood, priors.StandardNormal(latent_dim, name="prior"), **config)
    fields = {f.name for f in dataclasses.fields(Objective)}
    vae.objective = Objective(**{key: value for key, value in old.items() if key in fields})
    vae.batch_shards = int(old.get("batch_shards", 1))
    vae.from_version_1 = True
    return vae



def restore_log_sigma(vae, store):
    """Put a version-1 file's own variable (the learned log σ) into the likelihood; True if it did.
    (Version 2 files hold no VAE variables; versions 3 and 4 hold GECO's state, which VAE.load_own_variables reads.)"""
    if not list(store.keys()) or getattr(vae.likelihood, "learned_log_sigma", None) is None:
        return False
    vae.likelihood.learned_log_sigma.assign(store["0"])
    vae.likelihood.restored_by_parent = True
    return True


def restore_geco_version_3(vae, store):
    """Put a version-3 file's GECO state (log λ, the constraint's average) into the VAE. That version had no hold:
    its multiplier integrated from the first step, so the loaded one is released and goes on integrating."""
    vae.geco_log_multiplier.assign(store["0"])
    vae.geco_constraint.assign(store["1"])
    vae.geco_held.assign(0.0)

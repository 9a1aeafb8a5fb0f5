"""Models saved by earlier versions keep loading.

A version-1 model.keras (before the VAE had four parts: encoder, decoder, likelihood, prior) stored the
objective's settings in the VAE's config and the Gaussian's learned log σ as the VAE's own variable.
Versions 3 and 4 kept GECO's state as the VAE's own variables (two, before its hold existed; then five),
where it is now a layer of its own (targets.GECO). Objectives saved before a schedule's options were its
own name them as fields of the objective. tests/fixtures holds such files; tests/test_model.py and
tests/test_targets.py load them.
"""

import dataclasses
from typing import Any, Optional

from vae_kl.choices import architectures, likelihoods, priors
from vae_kl.spec.config import LossConfig
from vae_kl.spec.objective import Objective

# The settings a version-1 VAE (before the four-part design) stored in its config.
VERSION_1_KEYS = ("latent_dim", "likelihood", "reconstruction_reduction", "kl_reduction", "kl_weight", "free_bits",
                  "gaussian_sigma", "kl_schedule", "warmup_steps", "total_steps", "kl_cycles", "kl_ramp_ratio",
                  "dynamic_binarize", "seed", "fast_layers", "batch_shards")
# Where a schedule's options were fields of the objective (files before version 5): field -> option, by schedule.
SCHEDULE_FIELDS = {"linear": {"warmup_steps": "warmup_steps"}, "sigmoid": {"warmup_steps": "warmup_steps"},
                   "cyclical": {"kl_cycles": "cycles", "kl_ramp_ratio": "ramp_ratio"}}
OLD_SCHEDULE_FIELDS = ("warmup_steps", "kl_cycles", "kl_ramp_ratio")


def objective_from_saved(saved: dict) -> Objective:
    """The Objective a compile config (or a version-1 VAE config) recorded, in this version's fields."""
    saved = dict(saved)
    old = {key: saved.pop(key) for key in OLD_SCHEDULE_FIELDS if key in saved}
    if "schedule_options" not in saved:
        fields = SCHEDULE_FIELDS.get(saved.get("kl_schedule", "constant"), {})
        saved["schedule_options"] = {option: old[field] for field, option in fields.items() if field in old}
    if saved.get("target_distortion") is not None and saved.get("geco_unit") is None:
        saved["geco_unit"] = abs(saved["target_distortion"])  # Its constraint was reconstruction/κ - 1, κ > 0.
    known = {f.name for f in dataclasses.fields(Objective)}
    return Objective(**{key: value for key, value in saved.items() if key in known})


def from_version_1_config(cls: type, config: dict) -> Any:
    """Rebuild a model saved before the four-part design: the same layers (so the weights load), the
    standard normal prior it was trained with, and its objective (used if it is compiled again)."""
    old = {key: config.pop(key) for key in VERSION_1_KEYS if key in config}
    latent_dim, seed = old.get("latent_dim", 2), old.get("seed")
    likelihood = likelihoods.build(LossConfig(likelihood=old.get("likelihood", "bernoulli"),
                                              gaussian_sigma=old.get("gaussian_sigma", "learned")))
    networks = architectures.Conv(fast_layers=old.get("fast_layers", False))
    vae = cls(networks.encoder(latent_dim, seed=seed), networks.decoder(latent_dim), likelihood,
              priors.StandardNormal(latent_dim, name="prior"), **config)
    vae.objective = objective_from_saved(old)
    vae.batch_shards = int(old.get("batch_shards", 1))
    vae.from_version_1 = True
    return vae


def load_own_variables(vae: Any, store: Any, current: str) -> None:
    """VAE.load_own_variables: nothing for this version's layout (`current`); an earlier version's variables are
    put where this version keeps them; a layout this version does not know is refused (ValueError)."""
    stored = vae.stored_own_variables
    if stored == current and not list(store.keys()):
        return
    if not restore_own_variables(vae, store, None if stored == current else stored):
        raise ValueError(f"this model.keras stores the VAE's own variables as {stored!r}, which this version does "
                         f"not know ({current!r}); load it with the version that saved it.")


def restore_own_variables(vae: Any, store: Any, layout: Optional[str]) -> bool:
    """Put what an earlier version kept as the VAE's own variables where this version keeps them; False for a
    layout this version does not know. layout: what the file's config names ("geco-5"), or None when it names
    none (files before the name was recorded, and weights-only checkpoints), so that their number decides."""
    count = len(list(store.keys()))
    if vae.from_version_1:
        restore_log_sigma(vae, store)
    elif layout == "geco-5" or (layout is None and count == 5):  # Version 4: GECO with its hold.
        for index, variable in enumerate((vae.geco.log_multiplier, vae.geco.constraint, vae.geco.held,
                                          vae.geco.best, vae.geco.stalled)):
            variable.assign(store[str(index)])
    elif layout is None and count == 2:  # Version 3: GECO's multiplier and average, no hold.
        restore_geco_version_3(vae, store)
    else:
        return layout is None and count == 0  # Version 2, before GECO: nothing to restore.
    return True


def restore_log_sigma(vae: Any, store: Any) -> bool:
    """Put a version-1 file's own variable (the learned log σ) into the likelihood; True if it did.
    (Version 2 files hold no VAE variables.)"""
    if not list(store.keys()) or getattr(vae.likelihood, "learned_log_sigma", None) is None:
        return False
    vae.likelihood.learned_log_sigma.assign(store["0"])
    vae.likelihood.restored_by_parent = True
    return True


def restore_geco_version_3(vae: Any, store: Any) -> None:
    """Put a version-3 file's GECO state (log λ, the constraint's average) into the VAE's GECO layer. That version
    had no hold: its multiplier integrated from the first step, so the loaded one is released and goes on."""
    vae.geco.log_multiplier.assign(store["0"])
    vae.geco.constraint.assign(store["1"])
    vae.geco.held.assign(0.0)

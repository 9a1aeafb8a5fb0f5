"""The training objective, the frozen dataclass `VAE.compile(objective=...)` takes, and its effective β.

The training loss per digit is rec_scale·Σ_pixels NLL + λ·kl_scale·Σ_j KL_j
(losses.training_objective). Factoring out rec_scale gives
rec_scale·[Σ NLL + β·KL] with β = λ·kl_scale/rec_scale. Gradient descent does
not care about the overall positive factor rec_scale (Adam almost entirely
ignores it), so the run optimises a β-VAE objective with this β. β = 1 is the
ELBO (Kingma & Welling 2014); β_norm = β·J/D is the normalised β of Higgins
et al. (2017), with J latent dimensions and D = H·W·C pixel values. What an
objective means in words is vae_kl.spec.meaning's.
"""

import dataclasses
from typing import Optional, Union

from vae_kl.choices import registry, schedules

losses = registry.Deferred("losses")  # losses.py loads Keras: only a training computes the loss.


@dataclasses.dataclass
class Terms:
    """One batch's terms, what the objective weighs (VAE.compute_terms makes them).

    reconstruction: (batch,) Σ_pixels NLL, nats per digit; kl_per_dim: (batch, J) KL per latent unit, or
    (batch, 1) for a prior whose KL does not split; num_pixels D and latent_dim J; batch_mean: (batch, ...) ->
    (...), the mean over the global batch under tf.distribute (slicing.GlobalBatch.mean), None for the plain
    batch mean; tc: the batch's total-correlation estimate (losses.total_correlation) when tc_weight is set.
    """

    reconstruction: object
    kl_per_dim: object
    num_pixels: int
    latent_dim: int
    batch_mean: object = None
    tc: object = None


@dataclasses.dataclass(frozen=True)
class Objective:
    """How the per-digit terms are reduced and weighted, and how the KL weight moves during training.

    Per digit: rec_scale·Σ_pixels NLL + λ·m(step)·kl_scale·Σ_j KL_j (losses.training_objective), with m the
    multiplier of the schedule named kl_schedule (its options, in steps, in schedule_options) and free bits
    applied per dimension. kl_weight is the resolved λ (resolve_kl_weight). Steps count gradient steps from 0.
    """

    reconstruction_reduction: str = "sum"
    kl_reduction: str = "sum"
    kl_weight: float = 1.0
    free_bits: float = 0.0
    kl_schedule: str = "constant"
    schedule_options: dict = dataclasses.field(default_factory=dict)
    total_steps: int = 1
    # GECO (loss.kl_weight: auto): κ in summed nats per example, and how its multiplier moves. With κ set,
    # the VAE's GECO layer (vae_kl.training.targets.GECO) chooses β each step and kl_weight is only its start,
    # β = 1; geco_patience: steps without progress before a multiplier held at its start is released.
    target_distortion: Optional[float] = None
    geco_unit: Optional[float] = None  # s of GECO's constraint (reconstruction - κ)/s, in nats: geco_unit(κ, D).
    geco_rate: float = 0.2
    geco_smoothing: float = 0.95
    geco_patience: int = 500
    # Capacity (loss.target_rate): C in summed nats per example, reached through the schedule's ramp, and γ.
    target_rate: Optional[float] = None
    rate_weight: float = 1000.0
    # β-TC (loss.tc_weight): the effective weight of the KL's total correlation, on β's scale; None: off.
    tc_weight: Optional[float] = None

    @classmethod
    def from_config(cls, loss_cfg, latent_dim: int, num_pixels: int, steps_per_epoch: int,
                    epochs: int) -> "Objective":
        """The objective a config's loss section describes, for a run of epochs × steps_per_epoch steps."""
        weight = resolve_kl_weight(loss_cfg.kl_weight, loss_cfg.kl_weight_norm, loss_cfg.reconstruction_reduction,
                                   loss_cfg.kl_reduction, latent_dim, num_pixels)
        schedule = schedules.FAMILY.get(loss_cfg.kl_schedule)
        return cls(reconstruction_reduction=loss_cfg.reconstruction_reduction, kl_reduction=loss_cfg.kl_reduction,
                   kl_weight=weight, free_bits=loss_cfg.free_bits, kl_schedule=loss_cfg.kl_schedule,
                   schedule_options=schedule.options_from(loss_cfg, steps_per_epoch),
                   total_steps=steps_per_epoch * epochs, target_distortion=loss_cfg.target_distortion,
                   geco_unit=None if loss_cfg.target_distortion is None else geco_unit(loss_cfg.target_distortion,
                                                                                      num_pixels),
                   geco_rate=loss_cfg.geco_rate, geco_smoothing=loss_cfg.geco_smoothing,
                   geco_patience=loss_cfg.geco_patience, target_rate=loss_cfg.target_rate,
                   rate_weight=loss_cfg.rate_weight, tc_weight=loss_cfg.tc_weight)

    def schedule(self) -> schedules.Schedule:
        return schedules.get(self.kl_schedule, self.total_steps, **self.schedule_options)

    def multiplier(self, step):
        """The schedule's multiplier m(step) in [0, 1] (a scalar, or an array of steps)."""
        return self.schedule().at(step)

    def rate_at(self, step):
        """The capacity C in force at `step`: target_rate times the schedule's multiplier (its ramp)."""
        return self.target_rate * self.multiplier(step)

    @property
    def chooses_beta(self) -> bool:
        """Whether β is chosen during training (GECO) rather than fixed by kl_weight and the schedule."""
        return self.target_distortion is not None

    def kl_weight_for_beta(self, beta, latent_dim: int, num_pixels: int):
        """The λ that gives effective β = beta with this objective's reductions."""
        rec_scale, kl_scale = scales(self.reconstruction_reduction, self.kl_reduction, latent_dim, num_pixels)
        return beta * rec_scale / kl_scale

    def kl_weight_at(self, step):
        """λ times the schedule's multiplier at `step` (a scalar or an array of steps)."""
        return self.kl_weight * self.multiplier(step)

    def tc_coefficient(self, step, latent_dim: int, num_pixels: int):
        """What multiplies the batch's total correlation estimate in the loss (tc_weight): the loss is
        rec_scale·[Σ NLL + β·(KL - TC) + tc_weight·TC], both weights times the schedule's multiplier, so the
        estimate enters as m(step)·(rec_scale·tc_weight - λ·kl_scale)·TC."""
        rec_scale, kl_scale = scales(self.reconstruction_reduction, self.kl_reduction, latent_dim, num_pixels)
        return self.multiplier(step) * (rec_scale * self.tc_weight - self.kl_weight * kl_scale)

    def loss(self, terms: Terms, step, beta=None):
        """The batch's training loss (a scalar) from its terms. beta: the effective β GECO chose for this
        step (chooses_beta), else None for the configured weight and schedule."""
        mean = terms.batch_mean or losses.batch_average
        if self.target_rate is not None:
            return losses.capacity_objective(terms.reconstruction, terms.kl_per_dim, terms.num_pixels,
                                             self.reconstruction_reduction, self.rate_at(step), self.rate_weight, mean)
        weight = self.kl_weight_at(step) if beta is None else \
            self.kl_weight_for_beta(beta, terms.latent_dim, terms.num_pixels)
        loss = losses.training_objective(terms.reconstruction, terms.kl_per_dim, terms.num_pixels, terms.latent_dim,
                                         self.reconstruction_reduction, self.kl_reduction, weight, self.free_bits,
                                         mean)
        if self.tc_weight is None:
            return loss
        return loss + self.tc_coefficient(step, terms.latent_dim, terms.num_pixels) * terms.tc


def scales(reconstruction_reduction: str, kl_reduction: str, latent_dim: int, num_pixels: int) -> tuple:
    """(rec_scale, kl_scale): 1 for a sum, 1/D or 1/J for a mean."""
    rec_scale = 1.0 / num_pixels if reconstruction_reduction == "mean" else 1.0
    kl_scale = 1.0 / latent_dim if kl_reduction == "mean" else 1.0
    return rec_scale, kl_scale


def resolve_kl_weight(kl_weight: Optional[Union[float, str]], kl_weight_norm: Optional[float],
                      reconstruction_reduction: str, kl_reduction: str, latent_dim: int, num_pixels: int) -> float:
    """The λ to put on the KL term: kl_weight as given, the λ that makes β = β_norm·D/J, or for kl_weight
    "auto" (GECO) the λ of its first step, β = 1."""
    if kl_weight_norm is None and kl_weight != "auto":
        return 1.0 if kl_weight is None else float(kl_weight)
    rec_scale, kl_scale = scales(reconstruction_reduction, kl_reduction, latent_dim, num_pixels)
    beta = 1.0 if kl_weight == "auto" else kl_weight_norm * num_pixels / latent_dim
    return beta * rec_scale / kl_scale


GECO_UNIT_PER_PIXEL = 0.1  # Nats: the least unit of GECO's constraint is 0.1 nat per pixel value (78.4 for MNIST).


def geco_unit(kappa: float, num_pixels: int) -> float:
    """s of GECO's constraint c = (reconstruction - κ)/s: |κ|, so that c is relative to κ (reconstruction/κ - 1
    for κ > 0) and geco_rate means the same for any κ, but at least GECO_UNIT_PER_PIXEL·D nats, so that it is
    defined for a κ at or near 0, which a density's negative log-likelihood (it can be below 0) allows."""
    return max(abs(float(kappa)), GECO_UNIT_PER_PIXEL * num_pixels)

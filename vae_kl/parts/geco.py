"""GECO's multiplier as a layer of its own (Rezende & Viola 2018), which every VAE holds as `vae.geco`.

GECO (loss.kl_weight: auto with loss.target_distortion κ) chooses β during training so that the
reconstruction averages κ. Its state is this small Keras layer, so Keras saves it with the model and a
resumed run keeps its multiplier; what a GECO run reports is vae_kl.training.targets'.
"""

from typing import Any

import keras
from keras import ops

GECO_LOG_BOUND = 13.8  # |log λ| of GECO's multiplier at most: β = 1/λ in [1e-6, 1e6].
GECO_PROGRESS = 1e-3  # While GECO holds its multiplier, a fall of the constraint's average by this much is progress.


@keras.saving.register_keras_serializable(package="vae_kl")
class GECO(keras.layers.Layer):
    """GECO's multiplier and its anti-windup hold: five scalars, updated after every step of a GECO run.

    log_multiplier is log λ, with β = 1/λ; constraint, the moving average of (reconstruction - κ)/s; held, 1 while
    the multiplier holds its start; best, the lowest average while held; stalled, the steps since that lowest
    last fell by GECO_PROGRESS. Every VAE holds one (unused unless the objective chooses β), so every model.keras
    has the same layout.
    """

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.log_multiplier, self.constraint, self.held, self.best, self.stalled = (
            self.add_weight(shape=(), initializer=start, trainable=False, name=name)
            for name, start in (("log_multiplier", "zeros"), ("constraint", "zeros"), ("held", "ones"),
                                ("best", "zeros"), ("stalled", "zeros")))
        self.built = True

    def beta(self):
        """GECO's effective β = 1/λ = exp(-log λ) (a scalar tensor)."""
        return ops.exp(-self.log_multiplier)

    def update(self, reconstruction, first_step, goal):
        """The multiplier's update after a step: the constraint c = (reconstruction - κ)/s (the batch's mean summed
        NLL against κ = goal.target_distortion, in units s = goal.geco_unit: |κ|, at least 0.1 nat per pixel
        value) enters a moving average, started at the first step's c, and log λ moves by rate·average: λ grows
        (β falls) while the reconstruction is above κ, and shrinks (β grows) while it is below.

        Anti-windup: early on the reconstruction is far above any κ the network can reach yet, whatever β is,
        and integrating that drives λ to its bound, from which it takes thousands of steps to return. So log λ
        holds its start until the average first reaches 0 (κ reached) or has not fallen by GECO_PROGRESS for
        goal.geco_patience steps (κ out of reach at this β: then β must fall). Released, it stays so.
        """
        c = (ops.stop_gradient(reconstruction) - goal.target_distortion) / goal.geco_unit
        average = ops.where(first_step, c, goal.geco_smoothing * self.constraint + (1 - goal.geco_smoothing) * c)
        self.constraint.assign(average)
        progress = ops.logical_or(first_step, average < self.best - GECO_PROGRESS)
        self.best.assign(ops.where(progress, average, self.best))
        self.stalled.assign(ops.where(progress, 0.0, self.stalled + 1.0))
        reached, stalled = average <= 0.0, self.stalled >= float(goal.geco_patience)
        released = ops.logical_or(self.held < 0.5, ops.logical_or(reached, stalled))
        self.held.assign(ops.where(released, 0.0, 1.0))
        # Bounded to β in [1e-6, 1e6]: a κ the model cannot reach would otherwise drive λ to overflow.
        step = ops.where(released, goal.geco_rate * average, 0.0)
        self.log_multiplier.assign(ops.clip(self.log_multiplier + step, -GECO_LOG_BOUND, GECO_LOG_BOUND))

    def load_own_variables(self, store):
        if not list(store.keys()):  # A file of an earlier version (legacy.py put its GECO state here, if it had one).
            return
        super().load_own_variables(store)


def kl_weight_in_force(vae: Any) -> float:
    """λ times the schedule's multiplier at the optimizer's current step (GECO: the λ of its β)."""
    goal = vae.objective
    if goal.chooses_beta:
        return goal.kl_weight_for_beta(vae.geco.beta(), vae.latent_dim, vae.num_pixels)
    return goal.kl_weight_at(vae.optimizer.iterations if vae.optimizer is not None else 0)

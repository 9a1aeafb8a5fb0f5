"""KL-weight schedules: the fraction of the final KL weight in force at a training step.

One class per schedule, holding its multiplier (written with `keras.ops`, so the same code runs
inside the train step on the optimizer's step counter and in numpy for plots and tests) and its
traits: the loss settings it reads (a setting given to a schedule that ignores it is named at
start-up rather than ignored), whether it needs a warm-up length, and the first step at which it
reaches full weight (for the start-up warning). To add a schedule: write its class here with
`@FAMILY.register` and test it in tests/test_schedules.py; loss.kl_schedule then accepts its name.
"""

import math

from vae_kl.choices import registry

ops = registry.Deferred("keras.ops")  # Imported when a multiplier is computed: --explain reads only the traits.

FAMILY = registry.Family("loss.kl_schedule")

# Steepness of the sigmoid warm-up; it is rescaled to run exactly from 0 to 1.
_SIGMOID_STEEPNESS = 10.0


class Schedule:
    """A schedule over a run of total_steps gradient steps (0-based).

    Args:
        warmup_steps: length of a warm-up, in steps (linear, sigmoid).
        total_steps: all steps of training.
        cycles, ramp_ratio: the cyclical schedule's shape.
    """

    name_in_config = None  # The config name (loss.kl_schedule).
    settings_read = ()  # Loss-section keys it reads besides kl_weight.
    needs_warmup = False  # Whether loss.kl_warmup must be >= 1 (config refuses 0).
    fix = "lengthen training or shorten kl_warmup."  # Advice when it never reaches full weight.

    def __init__(self, warmup_steps=0, total_steps=1, cycles=1, ramp_ratio=0.5):
        self.warmup_steps, self.total_steps, self.cycles, self.ramp_ratio = warmup_steps, total_steps, cycles, ramp_ratio

    def multiplier(self, step):
        """The multiplier in [0, 1] at `step` (a float32 tensor, cast already)."""
        raise NotImplementedError

    def first_full_step(self):
        """The first step (below total_steps) at which the multiplier is 1, or None if it never is."""
        raise NotImplementedError


@FAMILY.register
class Constant(Schedule):
    """1 from the first step: the tutorial's fixed weight."""

    name_in_config = "constant"

    def multiplier(self, step):
        return ops.ones_like(step)

    def first_full_step(self):
        return 0


@FAMILY.register
class Linear(Schedule):
    """step / warmup_steps, then 1 (Bowman et al. 2016 anneal the weight from 0)."""

    name_in_config, settings_read, needs_warmup = "linear", ("kl_warmup", "kl_warmup_unit"), True

    def multiplier(self, step):
        return ops.minimum(step / max(self.warmup_steps, 1), 1.0)

    def first_full_step(self):
        return self.warmup_steps if self.warmup_steps < self.total_steps else None


@FAMILY.register
class Sigmoid(Linear):
    """A logistic curve rescaled to go from 0 at step 0 to 1 at warmup_steps."""

    name_in_config = "sigmoid"

    def multiplier(self, step):
        t = ops.minimum(step / max(self.warmup_steps, 1), 1.0)
        low = 1.0 / (1.0 + math.exp(0.5 * _SIGMOID_STEEPNESS))
        high = 1.0 / (1.0 + math.exp(-0.5 * _SIGMOID_STEEPNESS))
        return (ops.sigmoid(_SIGMOID_STEEPNESS * (t - 0.5)) - low) / (high - low)


@FAMILY.register
class Cyclical(Schedule):
    """total_steps split into `cycles` equal periods; in each the weight rises linearly over the first
    `ramp_ratio` of the period, then stays at 1 (Fu et al. 2019)."""

    name_in_config, settings_read = "cyclical", ("kl_cycles", "kl_ramp_ratio")
    fix = "lower kl_ramp_ratio or kl_cycles (each cycle must have a step past its ramp)."

    def multiplier(self, step):
        period = max(self.total_steps / self.cycles, 1.0)
        phase = (step - period * ops.floor(step / period)) / period
        return ops.minimum(phase / self.ramp_ratio, 1.0)

    def first_full_step(self):
        # Steps are whole numbers: a cycle of P steps reaches 1 only if a step s with s - c·P >= r·P lies
        # before the cycle's end (with P = 30 and r = 0.99 none does: its last step has phase 29/30).
        period = max(self.total_steps / self.cycles, 1.0)
        for cycle in range(self.cycles):
            step = math.ceil(period * (cycle + self.ramp_ratio))
            if step < min(period * (cycle + 1), self.total_steps):
                return step
        return None


def get(name, warmup_steps=0, total_steps=1, cycles=1, ramp_ratio=0.5):
    """The schedule registered as `name` over a run of that shape (ValueError for an unknown name)."""
    return FAMILY.get(name)(warmup_steps, total_steps, cycles, ramp_ratio)


def kl_multiplier(step, schedule, warmup_steps=0, total_steps=1, cycles=1, ramp_ratio=0.5):
    """Multiplier in [0, 1] for the KL weight at `step` (0-based; a scalar or tensor), as a float32 tensor."""
    return get(schedule, warmup_steps, total_steps, cycles, ramp_ratio).multiplier(ops.cast(step, "float32"))


def first_full_weight_step(schedule, warmup_steps, total_steps, cycles, ramp_ratio):
    """The first step (0-based, below total_steps) at which the multiplier is 1, or None if it never is."""
    return get(schedule, warmup_steps, total_steps, cycles, ramp_ratio).first_full_step()

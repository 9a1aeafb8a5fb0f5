"""KL-weight schedules: the fraction of the final KL weight in force at a training step.

Pure functions written with `keras.ops`, so the same code runs inside the train
step (on the optimizer's step counter) and in numpy for plots and tests. Each
schedule also declares the loss settings it reads (SETTINGS_READ), so a setting
given to a schedule that ignores it is named at start-up rather than ignored.
"""

import math

# The loss-section keys each schedule reads (besides loss.kl_weight): objective.teaching_warnings names any
# other schedule key that was changed from its default, since that schedule would silently ignore it.
SETTINGS_READ = {"constant": (), "linear": ("kl_warmup", "kl_warmup_unit"), "sigmoid": ("kl_warmup", "kl_warmup_unit"),
                 "cyclical": ("kl_cycles", "kl_ramp_ratio")}
SCHEDULE_SETTINGS = ("kl_warmup", "kl_warmup_unit", "kl_cycles", "kl_ramp_ratio")

# Steepness of the sigmoid warm-up; it is rescaled to run exactly from 0 to 1.
_SIGMOID_STEEPNESS = 10.0


def kl_multiplier(step, schedule, warmup_steps=0, total_steps=1, cycles=1, ramp_ratio=0.5):
    """Multiplier in [0, 1] for the KL weight at `step` (0-based), as a float32 tensor.

    - constant: 1 from the first step.
    - linear: step / warmup_steps, then 1 (Bowman et al. 2016 anneal the weight from 0).
    - sigmoid: a logistic curve rescaled to go from 0 at step 0 to 1 at warmup_steps.
    - cyclical: total_steps is split into `cycles` equal periods; in each the weight
      rises linearly over the first `ramp_ratio` of the period, then stays at 1
      (Fu et al. 2019).

    Args:
        step: the global step, a scalar (Python number or tensor).
        warmup_steps: length of the linear or sigmoid warm-up.
        total_steps: all steps of training (used by cyclical).
        cycles, ramp_ratio: the cyclical schedule's shape.
    """
    from keras import ops  # Here, not at the top: --explain reads this module and must not load TensorFlow.

    step = ops.cast(step, "float32")
    if schedule == "constant":
        return ops.ones_like(step)
    if schedule == "linear":
        return ops.minimum(step / max(warmup_steps, 1), 1.0)
    if schedule == "sigmoid":
        t = ops.minimum(step / max(warmup_steps, 1), 1.0)
        low = 1.0 / (1.0 + math.exp(0.5 * _SIGMOID_STEEPNESS))
        high = 1.0 / (1.0 + math.exp(-0.5 * _SIGMOID_STEEPNESS))
        return (ops.sigmoid(_SIGMOID_STEEPNESS * (t - 0.5)) - low) / (high - low)
    if schedule == "cyclical":
        period = max(total_steps / cycles, 1.0)
        phase = (step - period * ops.floor(step / period)) / period
        return ops.minimum(phase / ramp_ratio, 1.0)
    raise ValueError(f"Unknown kl_schedule {schedule!r}; see config.SCHEDULES.")


def first_full_weight_step(schedule, warmup_steps, total_steps, cycles, ramp_ratio):
    """The first step (0-based, below total_steps) at which the multiplier is 1, or None if it never is."""
    if schedule == "constant":
        return 0
    if schedule in ("linear", "sigmoid"):
        return warmup_steps if warmup_steps < total_steps else None
    if schedule == "cyclical":
        # Steps are whole numbers: a cycle of P steps reaches 1 only if a step s with s - c·P >= r·P lies
        # before the cycle's end (with P = 30 and r = 0.99 none does: its last step has phase 29/30).
        period = max(total_steps / cycles, 1.0)
        for cycle in range(cycles):
            step = math.ceil(period * (cycle + ramp_ratio))
            if step < min(period * (cycle + 1), total_steps):
                return step
        return None
    raise ValueError(f"Unknown kl_schedule {schedule!r}; see config.SCHEDULES.")

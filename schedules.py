"""KL-weight schedules: the fraction of the final KL weight in force at a training step.

Pure functions written with `keras.ops`, so the same code runs inside the train
step (on the optimizer's step counter) and in numpy for plots and tests.
"""

import math

from keras import ops

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
    """The first step at which the multiplier reaches 1, or None if it never does."""
    if schedule == "constant":
        return 0
    if schedule in ("linear", "sigmoid"):
        reach = warmup_steps
    else:
        reach = math.ceil(ramp_ratio * total_steps / cycles)
    return reach if reach < total_steps else None

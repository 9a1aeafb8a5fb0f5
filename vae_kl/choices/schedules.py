"""KL-weight schedules: the fraction of the final KL weight in force at a training step.

One class per schedule, holding its multiplier (written with `keras.ops`, so the same code runs
inside the train step on the optimizer's step counter and in numpy for plots and tests) and its
traits: the loss settings it reads, declared here with their types, ranges and defaults (a setting
given to a schedule that ignores it is named at start-up rather than ignored), how they become its
options in steps (`options`), whether it needs a warm-up length, and the first step at which it
reaches full weight (for the start-up warning). To add a schedule: write its class here with
`@FAMILY.register` and test it in tests/test_schedules.py; loss.kl_schedule then accepts its name and
the loss section its settings.
"""

import math
from typing import Literal

from vae_kl.choices import registry
from vae_kl.choices.registry import Setting

ops = registry.Deferred("keras.ops")  # Imported when a multiplier is computed: --explain reads only the traits.

FAMILY = registry.Family("loss.kl_schedule")

# Steepness of the sigmoid warm-up; it is rescaled to run exactly from 0 to 1.
_SIGMOID_STEEPNESS = 10.0

WARMUP = Setting.of("kl_warmup", int, 0, "Length of the warm-up, in kl_warmup_unit.", ge=0, le=10**9)
WARMUP_UNIT = Setting.of("kl_warmup_unit", Literal["epochs", "steps"], "epochs", "Unit of kl_warmup: epochs | steps.")
CYCLES = Setting.of("kl_cycles", int, 4, "Number of cycles over the whole run (Fu et al. 2019).", ge=1, le=100000)
RAMP_RATIO = Setting.of("kl_ramp_ratio", float, 0.5, "Fraction of each cycle spent ramping the weight up.",
                        gt=0, le=1)


class Schedule:
    """A schedule over a run of total_steps gradient steps (0-based), with its options (in steps) as
    keyword arguments: what `options` makes of the settings it reads."""

    name_in_config = None  # The config name (loss.kl_schedule).
    summary = ""  # A few words for help texts.
    settings = ()  # The loss settings it reads besides kl_weight (registry.Setting).
    needs_warmup = False  # Whether loss.kl_warmup must be >= 1 (config refuses 0).
    fix = "lengthen training or shorten kl_warmup."  # Advice when it never reaches full weight.

    def __init__(self, total_steps: int = 1, **options):
        self.total_steps, self.options = total_steps, options

    @classmethod
    def options_from(cls, loss_cfg, steps_per_epoch: int) -> dict:
        """Its options from the config's loss section: its settings, with lengths converted to steps."""
        return {}

    def at(self, step):
        """The multiplier at `step` (0-based; a number, an array of steps or a tensor) as a float32 tensor."""
        return self.multiplier(ops.cast(step, "float32"))

    def multiplier(self, step):
        """The multiplier in [0, 1] at `step` (a float32 tensor, cast already)."""
        raise NotImplementedError

    def first_full_step(self):
        """The first step (below total_steps) at which the multiplier is 1, or None if it never is."""
        raise NotImplementedError


@FAMILY.register
class Constant(Schedule):
    """1 from the first step: the tutorial's fixed weight."""

    name_in_config, summary = "constant", "the tutorial's fixed weight"

    def multiplier(self, step):
        return ops.ones_like(step)

    def first_full_step(self):
        return 0


@FAMILY.register
class Linear(Schedule):
    """step / warmup_steps, then 1 (Bowman et al. 2016 anneal the weight from 0)."""

    name_in_config, summary, settings, needs_warmup = "linear", "0 to λ over kl_warmup", (WARMUP, WARMUP_UNIT), True

    @classmethod
    def options_from(cls, loss_cfg, steps_per_epoch):
        per_unit = steps_per_epoch if loss_cfg.kl_warmup_unit == "epochs" else 1
        return {"warmup_steps": loss_cfg.kl_warmup * per_unit}

    def multiplier(self, step):
        return ops.minimum(step / max(self.options["warmup_steps"], 1), 1.0)

    def first_full_step(self):
        warmup = self.options["warmup_steps"]
        return warmup if warmup < self.total_steps else None


@FAMILY.register
class Sigmoid(Linear):
    """A logistic curve rescaled to go from 0 at step 0 to 1 at warmup_steps."""

    name_in_config, summary = "sigmoid", "an S-curve over kl_warmup"

    def multiplier(self, step):
        t = ops.minimum(step / max(self.options["warmup_steps"], 1), 1.0)
        low = 1.0 / (1.0 + math.exp(0.5 * _SIGMOID_STEEPNESS))
        high = 1.0 / (1.0 + math.exp(-0.5 * _SIGMOID_STEEPNESS))
        return (ops.sigmoid(_SIGMOID_STEEPNESS * (t - 0.5)) - low) / (high - low)


@FAMILY.register
class Cyclical(Schedule):
    """total_steps split into `cycles` equal periods; in each the weight rises linearly over the first
    `ramp_ratio` of the period, then stays at 1 (Fu et al. 2019)."""

    name_in_config, summary, settings = "cyclical", "kl_cycles ramps", (CYCLES, RAMP_RATIO)
    fix = "lower kl_ramp_ratio or kl_cycles (each cycle must have a step past its ramp)."

    @classmethod
    def options_from(cls, loss_cfg, steps_per_epoch):
        return {"cycles": loss_cfg.kl_cycles, "ramp_ratio": loss_cfg.kl_ramp_ratio}

    def multiplier(self, step):
        period = max(self.total_steps / self.options["cycles"], 1.0)
        phase = (step - period * ops.floor(step / period)) / period
        return ops.minimum(phase / self.options["ramp_ratio"], 1.0)

    def first_full_step(self):
        # Steps are whole numbers: a cycle of P steps reaches 1 only if a step s with s - c·P >= r·P lies
        # before the cycle's end (with P = 30 and r = 0.99 none does: its last step has phase 29/30).
        cycles, ramp_ratio = self.options["cycles"], self.options["ramp_ratio"]
        period = max(self.total_steps / cycles, 1.0)
        for cycle in range(cycles):
            step = math.ceil(period * (cycle + ramp_ratio))
            if step < min(period * (cycle + 1), self.total_steps):
                return step
        return None


def get(name: str, total_steps: int = 1, **options: float) -> Schedule:
    """The schedule registered as `name` over a run of total_steps, with its options (ValueError: unknown name)."""
    return FAMILY.get(name)(total_steps, **options)

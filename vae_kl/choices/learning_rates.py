"""Learning-rate schedules (train.lr_schedule): Adam's rate at every step, as a number or a Keras schedule.

One class per schedule, carrying its traits like the other families: its name, the train settings it
reads (declared here), how many epochs it lasts, and the rate it gives the optimizer (`rate`, a number
or a keras.optimizers.schedules.LearningRateSchedule, which is a function of the optimizer's step count
and so resumes with the checkpoint). To add one: a class here with `@FAMILY.register`.
"""

import math

from vae_kl.choices import registry
from vae_kl.choices.registry import Setting

keras = registry.Deferred("keras")  # Only a training makes a schedule.

FAMILY = registry.Family("train.lr_schedule")

PASSES_SCALE = Setting.of(
    "lr_passes_scale", float, 1.0, "Stage i lasts 3^i × this many passes over the data (1: the paper's 3,280 "
    "passes in all; 0.1: a tenth).", gt=0, le=100)


class Rate:
    """Base class: a constant rate unless a subclass says otherwise."""

    name_in_config = None  # The config name (train.lr_schedule).
    summary = ""  # A few words for help texts.
    settings = ()  # Train settings only this schedule reads (config refuses them with another).

    @classmethod
    def epochs(cls, train_cfg):
        """The passes over the data the schedule is laid out for, or None when it has no length."""
        return None

    @classmethod
    def rate(cls, train_cfg, steps_per_epoch: int):
        """Adam's learning rate: a number, or a Keras LearningRateSchedule of the step."""
        return train_cfg.learning_rate

    @classmethod
    def describe(cls, train_cfg) -> str:
        """The rate in words, for the start-up notes and --explain."""
        return f"Adam's learning rate {train_cfg.learning_rate:g} throughout"

    @classmethod
    def notes(cls, train_cfg) -> list:
        """Start-up notes: the optimizer when it is not the tutorial's Adam, and a schedule longer or shorter than
        the run."""
        adam = (train_cfg.adam_beta_1, train_cfg.adam_beta_2, train_cfg.adam_epsilon)
        notes = []
        if cls is not Constant or adam != (0.9, 0.999, 1e-7):
            notes.append(f"NOTE: the optimizer is Adam with β₁ {adam[0]:g}, β₂ {adam[1]:g}, ε {adam[2]:g}; "
                         f"{cls.describe(train_cfg)}.")
        length = cls.epochs(train_cfg)
        if length is not None and abs(length - train_cfg.epochs) > 1e-9:
            ends = ("it stops within the schedule, at a rate above the schedule's last" if train_cfg.epochs < length
                    else "after its end the rate stays at its last value")
            notes.append(f"NOTE: train.lr_schedule {cls.name_in_config} is laid out for {length:g} passes over the "
                         f"data but train.epochs is {train_cfg.epochs}: {ends} (set train.epochs: {length:g}, or "
                         f"train.lr_passes_scale: {train_cfg.epochs / length * train_cfg.lr_passes_scale:.4g}).")
        return notes


@FAMILY.register
class Constant(Rate):
    """train.learning_rate at every step: the tutorial's Adam."""

    name_in_config, summary = "constant", "train.learning_rate throughout"


@FAMILY.register
class Burda2015(Rate):
    """Burda, Grosse & Salakhutdinov (2015), section 5: 3^i passes over the data at the rate
    learning_rate·10^(-i/7), for i = 0, ..., 7 (3,280 passes in all), each stage's length scaled by
    lr_passes_scale."""

    name_in_config, summary, settings = "burda2015", "Burda et al. 2015's eight stages", (PASSES_SCALE,)
    STAGES = 8

    @classmethod
    def stage_passes(cls, train_cfg) -> list:
        return [3 ** i * train_cfg.lr_passes_scale for i in range(cls.STAGES)]

    @classmethod
    def epochs(cls, train_cfg):
        return sum(cls.stage_passes(train_cfg))

    @classmethod
    def boundaries(cls, train_cfg, steps_per_epoch: int) -> list:
        """The last step (0-based) of stages 0 to 6: PiecewiseConstantDecay gives values[i] while the step is at
        most boundaries[i], and a stage of p passes is round(p·steps_per_epoch) steps."""
        ends = [math.fsum(cls.stage_passes(train_cfg)[:i + 1]) for i in range(cls.STAGES - 1)]
        return [max(0, round(end * steps_per_epoch) - 1) for end in ends]

    @classmethod
    def values(cls, train_cfg) -> list:
        return [train_cfg.learning_rate * 10 ** (-i / 7) for i in range(cls.STAGES)]

    @classmethod
    def rate(cls, train_cfg, steps_per_epoch):
        return keras.optimizers.schedules.PiecewiseConstantDecay(cls.boundaries(train_cfg, steps_per_epoch),
                                                                 cls.values(train_cfg))

    @classmethod
    def describe(cls, train_cfg):
        passes = ", ".join(f"{p:g}" for p in cls.stage_passes(train_cfg))
        return (f"Adam's learning rate {train_cfg.learning_rate:g}·10^(-i/7) for 3^i × {train_cfg.lr_passes_scale:g} "
                f"passes, i = 0..7 ({passes}: {math.fsum(cls.stage_passes(train_cfg)):g} passes in all; Burda et "
                f"al. 2015)")

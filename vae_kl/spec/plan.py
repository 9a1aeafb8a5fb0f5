"""What a run will do, worked out from its config and the shape of its data, without TensorFlow.

`Plan.from_config(cfg, data_shape)` gives the step counts, the objective (`objective.Objective`, what
`VAE.compile` takes), what that objective means (effective β, β_norm, the formula), what to expect,
and every start-up note. `train.py` prints it before training; `train.py --explain` prints it and
stops, which is why nothing here may import TensorFlow (tests/test_explain.py checks).
"""

import dataclasses
import math
import sys
from typing import Any, Optional

from vae_kl.choices import learning_rates, likelihoods
from vae_kl.spec import config, meaning, objective

MIN_EXECUTIONS_IN_A_TERMINAL = 10  # Progress-bar updates per epoch a terminal run aims at.


@dataclasses.dataclass
class Plan:
    cfg: object  # config.Config
    image_shape: tuple  # (H, W, C)
    train_examples: int
    steps_per_epoch: int
    total_steps: int
    steps_per_execution: int
    objective: objective.Objective
    description: dict  # objective.describe's dict, written to summary.json under `objective`.
    statement: str  # "Objective: loss = ..., Effective β = ..."
    expectation: str  # "Expect: ..."
    notes: list  # WARNING/NOTE lines about the objective and the data, in the order they are printed.
    execution_note: str  # Why steps_per_execution differs from the config (speed only), or None.

    @property
    def num_pixels(self):
        return math.prod(self.image_shape)

    @classmethod
    def from_config(cls, cfg, image_shape, train_examples):
        """The plan of a run of cfg on train_examples images of image_shape (H, W, C)."""
        loss, train = cfg.loss, cfg.train
        num_pixels, latent_dim = math.prod(image_shape), cfg.model.latent_dim
        steps_per_epoch = math.ceil(train_examples / train.batch_size)
        total_steps = steps_per_epoch * train.epochs
        check_target_distortion(loss, num_pixels)
        goal = objective.Objective.from_config(loss, latent_dim, num_pixels, steps_per_epoch, train.epochs)
        options = likelihoods.FAMILY.get(loss.likelihood).options(loss)
        description = meaning.describe(loss.reconstruction_reduction, loss.kl_reduction, goal.kl_weight, latent_dim,
                                       num_pixels, loss.likelihood, options)
        description = meaning.with_goal(description, goal, loss.likelihood)
        notes = meaning.teaching_warnings(loss, goal, latent_dim, num_pixels)
        notes += learning_rates.FAMILY.get(train.lr_schedule).notes(train)
        if train.precision != "float32":
            notes.append(f"NOTE: the encoder and decoder compute in {train.precision} (weights, the losses, the "
                         f"evaluation and model.keras stay float32).")
        per_execution, note = steps_per_execution(train, steps_per_epoch)
        return cls(cfg, tuple(image_shape), int(train_examples), steps_per_epoch, total_steps, per_execution, goal,
                   description, meaning.statement(description, latent_dim, num_pixels, loss.likelihood),
                   meaning.expectation(description, loss.likelihood, options), notes, note)


def steps_per_execution(train: config.TrainConfig, steps_per_epoch: int) -> tuple[int, Optional[str]]:
    """(gradient steps per call into TensorFlow, the note saying why it differs from the config, or None).

    Keras runs whole executions even across an epoch's end, which would shift later epochs' batches, so
    this is the largest divisor of the steps per epoch up to train.steps_per_execution; in a terminal few
    enough that the progress bar moves; under tf.distribute 1 (Keras 3.15's multi-step loop fails there
    even for one Dense layer: "You must feed a value for placeholder tensor ... while/cond").
    """
    if train.distribute != "none":
        return 1, None if train.steps_per_execution == 1 else (
            f"NOTE: train.distribute {train.distribute} runs 1 step per execution (Keras's multi-step loop fails "
            f"under tf.distribute); same math, a little slower.")
    limit = min(train.steps_per_execution, steps_per_epoch)
    bound = f"train.steps_per_execution {train.steps_per_execution}"
    terminal_limit = max(1, steps_per_epoch // MIN_EXECUTIONS_IN_A_TERMINAL)
    if sys.stdout.isatty() and terminal_limit < limit:  # Keras's bar moves once per execution.
        limit, bound = terminal_limit, (f"{terminal_limit}, so that the progress bar in this terminal moves "
                                        f"at least {MIN_EXECUTIONS_IN_A_TERMINAL} times an epoch")
    chosen = max(k for k in range(1, limit + 1) if steps_per_epoch % k == 0)
    if chosen == train.steps_per_execution:
        return chosen, None
    return chosen, (f"NOTE: running {chosen} steps per execution (the largest divisor of the {steps_per_epoch} "
                    f"steps per epoch up to {bound}); same math, different speed.")


def explain(plan: Plan, data_shape: Any, command: str) -> list[str]:
    """The lines `train.py --explain` prints: the data, the objective, every start-up note, what to expect.

    command: the train.py command line that would train this plan, for the last line."""
    shape = "×".join(str(v) for v in plan.image_shape)
    lines = ["Nothing is trained (--explain); this is what the run would optimise.",
             f"Data: {data_shape.name}, {shape} = {plan.num_pixels} values per image (D), latent size "
             f"{plan.cfg.model.latent_dim} (J); {plan.train_examples} training images: {plan.steps_per_epoch} "
             f"steps per epoch, {plan.total_steps} in all."]
    if data_shape.note:
        lines.append(f"NOTE: {data_shape.note}")
    lines.append(f"Choices: {config.choices_text(plan.cfg)}.")
    lines += [plan.statement, *plan.notes, plan.expectation, f"To train it: {command}"]
    return lines


def check_target_distortion(loss: config.LossConfig, num_pixels: int) -> None:
    """Refuse a GECO κ that the likelihood's reconstruction cannot get above (its trait reconstruction_floor):
    every step would meet it, and β would run to its bound (ConfigError, one line)."""
    if loss.kl_weight != "auto" or loss.target_distortion is None:
        return
    chosen = likelihoods.FAMILY.get(loss.likelihood)
    floor = chosen.reconstruction_floor(chosen.options(loss), num_pixels)
    if floor is not None and loss.target_distortion <= floor[0]:
        raise config.ConfigError(
            f"loss.target_distortion κ = {loss.target_distortion:g} nats is not above {floor[0]:.6g}, the least the "
            f"{loss.likelihood} likelihood's reconstruction of {num_pixels} pixel values can be ({floor[1]}), so "
            f"GECO would meet it at every step; choose a larger κ, e.g. the validation reconstruction_nats of a "
            f"β = 1 run (its summary.json).")

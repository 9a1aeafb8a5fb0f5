"""KL-weight schedules at chosen steps, against values worked out by hand."""

import math

import numpy as np
import pytest

from vae_kl.choices import schedules
from vae_kl.spec import config


def value(step, schedule, total_steps=1, **options):
    return float(np.asarray(schedules.get(schedule, total_steps, **options).at(step)))


def first_full(schedule, total_steps, **options):
    return schedules.get(schedule, total_steps, **options).first_full_step()


def test_constant_is_one_from_the_start():
    assert value(0, "constant") == 1.0
    assert value(1234, "constant") == 1.0


@pytest.mark.parametrize("step, expected", [(0, 0.0), (25, 0.25), (100, 1.0), (500, 1.0)])
def test_linear_warm_up(step, expected):
    assert math.isclose(value(step, "linear", warmup_steps=100), expected, abs_tol=1e-7)


def test_sigmoid_runs_from_zero_to_one_through_one_half():
    assert math.isclose(value(0, "sigmoid", warmup_steps=100), 0.0, abs_tol=1e-6)
    assert math.isclose(value(50, "sigmoid", warmup_steps=100), 0.5, abs_tol=1e-6)
    assert math.isclose(value(100, "sigmoid", warmup_steps=100), 1.0, abs_tol=1e-6)
    assert value(20, "sigmoid", warmup_steps=100) < value(20, "linear", warmup_steps=100)


@pytest.mark.parametrize("step, expected", [(0, 0.0), (10, 0.5), (20, 1.0), (39, 1.0), (40, 0.0), (50, 0.5),
                                            (79, 1.0), (80, 0.0)])
def test_cyclical_restarts_every_period(step, expected):
    # 160 steps, 4 cycles: period 40, ramp over the first half (20 steps).
    got = value(step, "cyclical", 160, cycles=4, ramp_ratio=0.5)
    assert math.isclose(got, expected, abs_tol=1e-6)


def test_schedules_evaluate_on_arrays_for_plots():
    steps = np.arange(0, 11, dtype="float32")
    got = np.asarray(schedules.get("linear", 1, warmup_steps=10).at(steps))
    np.testing.assert_allclose(got, steps / 10, atol=1e-7)


def test_first_full_weight_step():
    assert first_full("constant", 100) == 0
    assert first_full("linear", 100, warmup_steps=50) == 50
    assert first_full("linear", 100, warmup_steps=150) is None
    assert first_full("cyclical", 100, cycles=4, ramp_ratio=0.5) == 13


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="kl_schedule"):
        schedules.get("exponential")


@pytest.mark.parametrize("schedule, total, options", [
    ("constant", 50, {}), ("linear", 50, {"warmup_steps": 20}), ("linear", 50, {"warmup_steps": 50}),
    ("sigmoid", 40, {"warmup_steps": 7}), ("cyclical", 100, {"cycles": 4, "ramp_ratio": 0.5}),
    ("cyclical", 120, {"cycles": 4, "ramp_ratio": 0.99}), ("cyclical", 120, {"cycles": 4, "ramp_ratio": 1.0}),
    ("cyclical", 101, {"cycles": 3, "ramp_ratio": 0.97}), ("cyclical", 10, {"cycles": 7, "ramp_ratio": 0.3}),
    ("cyclical", 64, {"cycles": 4, "ramp_ratio": 0.9}),
])
def test_first_full_weight_step_agrees_with_the_multiplier_itself(schedule, total, options):
    # The independent reference: evaluate the multiplier at every step and find its first 1.
    values = np.asarray(schedules.get(schedule, total, **options).at(np.arange(total)))
    full = np.flatnonzero(values >= 1 - 1e-6)
    expected = int(full[0]) if len(full) else None
    assert first_full(schedule, total, **options) == expected


def test_every_schedule_declares_the_settings_it_reads_and_makes_its_options_from_them():
    assert schedules.FAMILY.names() == ("constant", "linear", "sigmoid", "cyclical")
    assert schedules.FAMILY.setting_keys() == ("kl_warmup", "kl_warmup_unit", "kl_cycles", "kl_ramp_ratio")
    loss = config.LossConfig()
    assert all(hasattr(loss, key) for key in schedules.FAMILY.setting_keys())  # Each is a config key.
    assert config.LossConfig.settings()["kl_cycles"] is schedules.CYCLES  # Declared once, by the schedule.
    loss = loss.replace(kl_warmup=3, kl_cycles=5, kl_ramp_ratio=0.25)
    assert schedules.Linear.options_from(loss, steps_per_epoch=10) == {"warmup_steps": 30}
    assert schedules.Linear.options_from(loss.replace(kl_warmup_unit="steps"), 10) == {"warmup_steps": 3}
    assert schedules.Cyclical.options_from(loss, 10) == {"cycles": 5, "ramp_ratio": 0.25}
    assert schedules.Constant.options_from(loss, 10) == {}

"""KL-weight schedules at chosen steps, against values worked out by hand."""

import math

import numpy as np
import pytest

from vae_kl.choices import schedules
from vae_kl.spec import config


def value(step, schedule, **kw):
    return float(np.asarray(schedules.kl_multiplier(step, schedule, **kw)))


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
    got = value(step, "cyclical", total_steps=160, cycles=4, ramp_ratio=0.5)
    assert math.isclose(got, expected, abs_tol=1e-6)


def test_schedules_evaluate_on_arrays_for_plots():
    steps = np.arange(0, 11, dtype="float32")
    got = np.asarray(schedules.kl_multiplier(steps, "linear", warmup_steps=10))
    np.testing.assert_allclose(got, steps / 10, atol=1e-7)


def test_first_full_weight_step():
    assert schedules.first_full_weight_step("constant", 0, 100, 1, 0.5) == 0
    assert schedules.first_full_weight_step("linear", 50, 100, 1, 0.5) == 50
    assert schedules.first_full_weight_step("linear", 150, 100, 1, 0.5) is None
    assert schedules.first_full_weight_step("cyclical", 0, 100, 4, 0.5) == 13


def test_unknown_schedule_is_refused():
    with pytest.raises(ValueError, match="kl_schedule"):
        schedules.kl_multiplier(0, "exponential")


@pytest.mark.parametrize("schedule, warmup, total, cycles, ratio", [
    ("constant", 0, 50, 1, 0.5), ("linear", 20, 50, 1, 0.5), ("linear", 50, 50, 1, 0.5), ("sigmoid", 7, 40, 1, 0.5),
    ("cyclical", 0, 100, 4, 0.5), ("cyclical", 0, 120, 4, 0.99), ("cyclical", 0, 120, 4, 1.0),
    ("cyclical", 0, 101, 3, 0.97), ("cyclical", 0, 10, 7, 0.3), ("cyclical", 0, 64, 4, 0.9),
])
def test_first_full_weight_step_agrees_with_the_multiplier_itself(schedule, warmup, total, cycles, ratio):
    # The independent reference: evaluate the multiplier at every step and find its first 1.
    values = np.asarray(schedules.kl_multiplier(np.arange(total), schedule, warmup, total, cycles, ratio))
    full = np.flatnonzero(values >= 1 - 1e-6)
    expected = int(full[0]) if len(full) else None
    assert schedules.first_full_weight_step(schedule, warmup, total, cycles, ratio) == expected


def test_every_schedule_declares_the_settings_it_reads():
    assert schedules.FAMILY.names() == ("constant", "linear", "sigmoid", "cyclical")
    assert schedules.FAMILY.setting_keys() == ("kl_warmup", "kl_warmup_unit", "kl_cycles", "kl_ramp_ratio")
    defaults = config.LossConfig()
    assert all(hasattr(defaults, key) for key in schedules.FAMILY.setting_keys())  # Each is a config key.
    with pytest.raises(ValueError, match="Unknown loss.kl_schedule 'warm'"):
        schedules.first_full_weight_step("warm", 0, 10, 1, 0.5)

"""Estimates in words, with their noise in mind (no TensorFlow: the report pages read it).

An estimator's noise can put a quantity that cannot be negative below 0 (the information a collapsed code
carries, the reconstruction its own code saves): such a value reads "0 within 2 standard errors", not as a
negative saving.
"""

from typing import Optional


def nats_text(value: float) -> str:
    """Nats to 3 decimals, with estimates that round to zero printed as 0.000 rather than -0.000."""
    return f"{0.0 if abs(value) < 5e-4 else value:.3f}"


NOISE_SE = 2.0  # An estimate within this many of its standard errors of 0 is reported as 0 within its noise.


def within_noise(value: float, se: Optional[float]) -> bool:
    return isinstance(se, (int, float)) and se > 0 and abs(value) <= NOISE_SE * se


def estimate_text(value: float, se: Optional[float] = None) -> str:
    """An estimate in nats with its noise in mind: '0 within 2 standard errors (-0.045, s.e. 0.031)' where a
    negative saving or information is the estimator's noise, else nats_text(value)."""
    if within_noise(value, se):
        return f"0 within {NOISE_SE:g} standard errors ({value:.2g}, s.e. {se:.2g})"
    return nats_text(value)

"""What a run whose weight was chosen by a target reports: GECO's final β and whether it is the λ for κ
(vae_kl.parts.geco holds its multiplier), and capacity's rate against the information it bought.
"""

import math
from typing import Any, Optional

from vae_kl.parts.geco import GECO_LOG_BOUND, kl_weight_in_force

# GECO's reconstruction within this many percent of κ counts as settled (summary.json says so otherwise).
GECO_SETTLED_PERCENT = 2.0
# A rate and the information it buys differ by more than this (nats) and the report says so: the KL counts
# noise the decoder ignores, the information only what reaches it (docs/evaluation.md).
RATE_INFORMATION_GAP = 1.0


def geco_result(vae: Any, history: list, validation: dict) -> dict:
    """What summary.json records of a GECO run: the β it ended with (the fixed λ to use for this distortion),
    κ, and the reconstruction reached in its last epoch of training and on the validation digits; with a note
    when that β is not the λ for κ: the multiplier still held at its start, at its bound after an epoch
    (history's `beta`), or the reconstruction not settled near κ."""
    goal = vae.objective
    reached = history[-1]["reconstruction"] if history else None
    # In % of the constraint's unit s (= |κ| unless κ is near 0): the constraint's own value, any sign of κ.
    gap = None if reached is None else 100 * (reached - goal.target_distortion) / goal.geco_unit
    result = {"final_beta": float(vae.geco.beta()), "final_kl_weight": float(kl_weight_in_force(vae)),
              "target_distortion": goal.target_distortion, "training_reconstruction_nats": reached,
              "validation_reconstruction_nats": validation["reconstruction_nats"], "training_gap_percent": gap,
              "held_to_the_end": bool(float(vae.geco.held))}
    note = geco_note(result, history, gap)
    return {**result, "note": note} if note else result


def geco_note(result: dict, history: list, gap: Optional[float]) -> Optional[str]:
    """Why a GECO run's final β is not the λ for κ, or None when it is."""
    bounds = [(int(row["epoch"]), row["beta"] > 1) for row in history if isinstance(row.get("beta"), (int, float))
              and abs(math.log(row["beta"])) >= GECO_LOG_BOUND - 1e-3]
    if result["held_to_the_end"]:
        return (f"GECO held β at its start for the whole run (anti-windup, loss.geco_patience): the reconstruction "
                f"never reached κ and was still improving, so β = {result['final_beta']:.3g} was never chosen; "
                f"train longer, or raise κ")
    if bounds:
        epoch, above = bounds[0]
        if above:
            return (f"β reached its upper bound ({math.exp(GECO_LOG_BOUND):.0e}) in epoch {epoch}: the "
                    f"reconstruction stayed below κ, so the multiplier kept shrinking (β growing) and κ never bound "
                    f"the KL; the β it ended with is not the λ for κ; lower κ (a β = 1 run's reconstruction is a "
                    f"start)")
        return (f"β reached its lower bound ({math.exp(-GECO_LOG_BOUND):.0e}) in epoch {epoch}: the reconstruction "
                f"stayed above κ, so the multiplier kept growing (β falling), and the β it ended with is not the λ "
                f"for κ; raise κ, or train longer so that the reconstruction reaches κ early in the run")
    if gap is not None and abs(gap) > GECO_SETTLED_PERCENT:
        side = "above" if gap > 0 else "below"
        return (f"the last epoch's training reconstruction is {gap:+.1f} % from κ ({side} it): GECO had not "
                f"settled, so this β is not yet the λ for κ; train longer")
    return None


def capacity_result(vae: Any, history: list, validation: dict) -> dict:
    """What summary.json records of a capacity run: C, the rate reached (training and validation KL) and
    the information the code carries, with a note when the two differ by more than RATE_INFORMATION_GAP."""
    information = validation.get("mutual_information_nats")
    result = {"target_rate": vae.objective.target_rate, "rate_weight": vae.objective.rate_weight,
              "training_kl_nats": history[-1]["kl"] if history else None,
              "validation_kl_nats": validation["kl_nats"], "information_nats": information}
    if isinstance(information, (int, float)) and validation["kl_nats"] - information > RATE_INFORMATION_GAP:
        result["note"] = (f"a target rate is not a target information: the code's KL is {validation['kl_nats']:.3g} "
                          f"nats but it carries {information:.3g} nats about the digit")
    return result

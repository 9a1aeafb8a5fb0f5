"""The rate–distortion frontier of a β sweep (Alemi et al. 2018): `sweep.py --frontier`'s figure and page.

A fixed-β VAE minimises D + β·R (D the reconstruction, R the KL, both in nats per digit), so at its
optimum the frontier D(R) has slope dD/dR = −β: moving along it trades nats of distortion for nats of
rate at exchange rate β. From a sweep's rows (sweep_page.result_rows) this module takes one point per
β (the mean over seeds ± standard error of the validation KL and reconstruction, the numbers
rate_distortion.png shows), the chord slopes between neighbouring β, and where a target distortion or
rate (a GECO run's κ, a capacity run's C, or --target-distortion / --target-rate) lies on it: log β
interpolated linearly between the two neighbouring settings. It writes frontier.png (plots.frontier),
frontier.md and a section of report.html. Other finished runs (--place) are read here too.
"""

import html
import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from typing import Optional

import numpy as np

from vae_kl.process import atomic
from vae_kl.reports import plots, sweep_page
from vae_kl.reports.sweep_page import beta_text, number, plus_minus
from vae_kl.spec import config

FIGURE = "frontier.png"
PAGE = "frontier.md"
CAPTION = "Rate against distortion, one point per β (mean over seeds ± standard error), with the slope −β at each"
READING = ("How to read it: each point is one β; moving along the frontier trades nats of distortion for nats of "
           "rate at exchange rate β. At the β-VAE optimum the frontier's slope is dD/dR = −β (the short segment at "
           "each point), so the chord between two neighbouring points should have a slope between their two −β.")
AXES = {"distortion": "reconstruction_nats", "rate": "kl_nats"}  # The validation numbers of rate_distortion.png.


@dataclass(frozen=True)
class Point:
    """One β setting on the frontier: the mean and standard error (None for one seed) over its finished seeds."""
    beta: float  # Effective β (summary.json's objective.effective_beta; loss.kl_weight with sum/sum reductions).
    kl_weight: str  # The grid's loss.kl_weight, as written.
    n: int
    planned: int
    rate: float
    rate_se: Optional[float]
    distortion: float
    distortion_se: Optional[float]


@dataclass(frozen=True)
class Placed:
    """A finished run drawn beside the frontier (--place): a GECO, capacity or plain run."""
    name: str
    kind: str  # "GECO", "capacity" or "fixed β".
    rate: float
    distortion: float
    beta: Optional[float]  # GECO: the final β it chose; fixed β: its effective β; capacity: None.
    kappa: Optional[float] = None  # GECO's target distortion κ.
    capacity: Optional[float] = None  # The capacity run's C.
    held: bool = False  # GECO only: its multiplier held at the start to the end (κ never reached in training).

    @property
    def label(self):
        if self.kind == "GECO":
            return f"{self.name}: GECO, κ = {self.kappa:g}, final β = {self.beta:.3g}"
        if self.kind == "capacity":
            return f"{self.name}: capacity, C = {self.capacity:g}"
        return f"{self.name}: β = {beta_text(self.beta)}"


@dataclass(frozen=True)
class Request:
    """What --frontier asks for beyond the sweep: runs to place, targets, and the command (for the page)."""
    placed: tuple = ()
    target_distortion: Optional[float] = None
    target_rate: Optional[float] = None
    command: str = ""


@dataclass(frozen=True)
class Reach:
    """Where a target value of one axis lies on the frontier."""
    axis: str  # "distortion" or "rate".
    target: float
    betas: tuple  # β interpolated at each crossing, in β order (several when the means are not monotone).
    outside: Optional[str]  # None, or "below" / "above": extend the grid below the smallest / above the largest β.
    monotone: bool  # Distortion non-decreasing in β, rate non-increasing, as the optimum implies.


# ---- Placed runs ---------------------------------------------------------------------------------------

def placed_run(run_dir: str, name: str) -> Placed:
    """A Placed from a run folder's summary.json; raises ConfigError when it is not a finished run."""
    summary = atomic.read_json(os.path.join(run_dir, "summary.json"))
    if not isinstance(summary, dict):
        raise config.ConfigError(f"--place {run_dir}: summary.json is missing or unreadable; give a finished run "
                                 f"folder (train.py wrote summary.json there) or a sweep folder (with sweep.yaml).")
    if summary.get("status") != "complete":
        raise config.ConfigError(f"--place {run_dir}: the run is not finished (status {summary.get('status')!r}); "
                                 f"finish it (run its train.py command again) or place another run.")
    validation = summary.get("validation") or {}
    rate, distortion = validation.get(AXES["rate"]), validation.get(AXES["distortion"])
    if not all(isinstance(value, (int, float)) for value in (rate, distortion)):
        raise config.ConfigError(f"--place {run_dir}: summary.json has no validation kl_nats and "
                                 f"reconstruction_nats; re-evaluate it (python evaluate.py --run {run_dir}).")
    geco, capacity = summary.get("geco"), summary.get("capacity")
    if isinstance(geco, dict):
        return Placed(name, "GECO", rate, distortion, recorded(geco, "final_beta", "geco", run_dir),
                      kappa=recorded(geco, "target_distortion", "geco", run_dir),
                      held=geco.get("held_to_the_end") is True)
    if isinstance(capacity, dict):
        return Placed(name, "capacity", rate, distortion, None,
                      capacity=recorded(capacity, "target_rate", "capacity", run_dir))
    return Placed(name, "fixed β", rate, distortion,
                  recorded(summary.get("objective") or {}, "effective_beta", "objective", run_dir))


def recorded(block: dict, key: str, name: str, run_dir: str) -> float:
    """A number summary.json's `name` block records; ConfigError when it is missing (a run of an older version)."""
    value = block.get(key)
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise config.ConfigError(f"--place {run_dir}: summary.json's {name} block has no {key}; the run was made by "
                                 f"an older version, so train it again or place another run.")
    return float(value)


def read_placed(path: str) -> list[Placed]:
    """The runs --place PATH names: one finished run folder, or every finished run of a sweep folder.
    Raises ConfigError (one `error:` line, exit 2) for anything else, before the sweep trains."""
    folder = os.path.abspath(path)
    if not os.path.isdir(folder):
        raise config.ConfigError(f"--place {path}: no such folder; give a finished run folder (holding summary.json) "
                                 f"or a sweep folder (holding sweep.yaml).")
    if os.path.isfile(os.path.join(folder, "summary.json")):
        return [placed_run(folder, os.path.basename(folder))]
    if not os.path.isfile(os.path.join(folder, "sweep.yaml")):
        raise config.ConfigError(f"--place {path} holds neither summary.json (a run) nor sweep.yaml (a sweep); "
                                 f"give a finished run folder or a sweep folder.")
    names = sorted(name for name in os.listdir(folder) if os.path.isfile(os.path.join(folder, name, "summary.json")))
    finished = [name for name in names
                if (atomic.read_json(os.path.join(folder, name, "summary.json")) or {}).get("status") == "complete"]
    if not finished:
        raise config.ConfigError(f"--place {path}: the sweep has no finished run yet; run it to the end first, "
                                 f"or place a finished run folder.")
    sweep_name = os.path.basename(folder).removeprefix("sweep_")
    return [placed_run(os.path.join(folder, name), f"{sweep_name}/{name}") for name in finished]


# ---- The math ------------------------------------------------------------------------------------------

def frontier_points(rows: list[dict]) -> tuple[list[Point], list[str]]:
    """(points in β order, settings left out): one Point per setting with a finished seed and an effective β;
    the others (no finished seed, no β recorded) by name."""
    points, left_out = [], []
    for setting in sweep_page.aggregate(rows):
        rate, distortion = setting[AXES["rate"]], setting[AXES["distortion"]]
        if not setting["n"] or setting["beta"] is None or rate[0] is None or distortion[0] is None:
            left_out.append(setting["setting"])
            continue
        points.append(Point(float(setting["beta"]), str(setting["rows"][0].get("loss.kl_weight", "")), setting["n"],
                            setting["planned"], rate[0], rate[1], distortion[0], distortion[1]))
    return sorted(points, key=lambda point: point.beta), left_out


def chord_slopes(points: list[Point]) -> list[Optional[float]]:
    """ΔD/ΔR between each point and the next (in β order); None where the rate did not change."""
    return [None if b.rate == a.rate else (b.distortion - a.distortion) / (b.rate - a.rate)
            for a, b in zip(points, points[1:])]


def reach(points: list[Point], target: float, axis: str) -> Reach:
    """Where `target` (nats of `axis`: "distortion" or "rate") lies on the frontier: log β linear in that axis
    between the two neighbouring points. Every crossing is kept: noisy means need not be monotone in β."""
    betas = [point.beta for point in points]
    values = [getattr(point, axis) for point in points]
    crossings = []
    for i in range(len(points) - 1):
        v0, v1 = values[i], values[i + 1]
        if v0 == v1:
            crossings += [betas[i]] if v0 == target else []
            continue
        t = (target - v0) / (v1 - v0)
        if 0 <= t < 1 or (t == 1 and i == len(points) - 2):  # A hit on a shared point counts once.
            crossings.append(math.exp(math.log(betas[i]) + t * (math.log(betas[i + 1]) - math.log(betas[i]))))
    if len(points) == 1 and values[0] == target:
        crossings.append(betas[0])
    steps = np.diff(values)
    monotone = bool(np.all(steps >= 0) if axis == "distortion" else np.all(steps <= 0))
    outside = None
    if not crossings:  # The broken line through the points covers [min, max]: the target lies beyond it.
        low = target < min(values)
        outside = "below" if low == (axis == "distortion") else "above"  # D rises with β, R falls.
    return Reach(axis, target, tuple(crossings), outside, monotone)


def chord_words(slope: Optional[float], beta: float, next_beta: float) -> str:
    """The chord's slope against the optimum's: between −β_next and −β (a convex frontier), or not."""
    if slope is None:
        return "the rate did not change"
    if slope > 0:
        return "positive: distortion and rate moved together, not a trade (seed noise or short training)"
    if -next_beta <= slope <= -beta:
        return f"between −{beta_text(next_beta)} and −{beta_text(beta)}, as the optimum implies"
    return f"{'steeper than' if slope < -next_beta else 'flatter than'} the −β range " \
           f"[−{beta_text(next_beta)}, −{beta_text(beta)}]"


# ---- Words ---------------------------------------------------------------------------------------------

def reach_words(found: Reach, name: str, points: list[Point]) -> str:
    """One sentence: which β reaches `name` (e.g. "κ = 140.2") on the frontier, or where to extend the grid."""
    values = [getattr(point, found.axis) for point in points]
    if found.outside:
        end = points[0] if found.outside == "below" else points[-1]
        trend = {("distortion", "below"): "smaller β gives less distortion",
                 ("distortion", "above"): "larger β gives more distortion",
                 ("rate", "below"): "smaller β gives more rate", ("rate", "above"): "larger β gives less rate"}
        return (f"{name} lies outside the grid's range ({found.axis} {number(min(values))} to {number(max(values))} "
                f"nats): extend the grid {found.outside} β = {beta_text(end.beta)} "
                f"({trend[found.axis, found.outside]}).")
    reached = " and at ".join(f"β ≈ {beta:.3g}" for beta in found.betas)
    words = f"{name} is reached at {reached} on the fixed-β frontier"
    if len(found.betas) > 1:
        return (words + f": the {found.axis} means are not monotone in β (seed noise or short training), so it "
                        f"is crossed {len(found.betas)} times; more seeds or epochs would settle which.")
    if not found.monotone:
        words += f" (the {found.axis} means are not monotone in β elsewhere: read it as a noisy estimate)"
    return words + "."


def placed_words(points: list[Point], run: Placed) -> str:
    """The frontier's β for a placed GECO run's κ or capacity run's C, beside what that run itself did."""
    if run.kind == "GECO":
        found = reach(points, run.kappa, "distortion")
        chose = (f"GECO never released β from its start, {run.beta:.3g}: the training reconstruction did not "
                 f"reach κ" if run.held else f"GECO chose β = {run.beta:.3g}")
        return (reach_words(found, f"κ = {run.kappa:g}", points).rstrip(".")
                + f"; {chose} ({run.name}, validation distortion {number(run.distortion)} nats).")
    found = reach(points, run.capacity, "rate")
    return (reach_words(found, f"C = {run.capacity:g}", points).rstrip(".")
            + f"; the capacity run {run.name} reached a validation rate of {number(run.rate)} nats.")


def statements(points: list[Point], request: Request) -> list[str]:
    """The page's sentences on targets: --target-distortion / --target-rate if given, else each placed
    GECO run's κ and capacity run's C."""
    if not points:
        return ["No β setting has a finished run yet, so no target can be placed on the frontier."]
    targets = [(axis, value, f"{word} {value:g}") for axis, value, word in
               (("distortion", request.target_distortion, "The distortion"), ("rate", request.target_rate, "The rate"))
               if value is not None]
    if targets:
        return [reach_words(reach(points, value, axis), name, points) for axis, value, name in targets]
    found = [placed_words(points, run) for run in request.placed if run.kind in ("GECO", "capacity")]
    return found or ["No target given: --target-distortion D or --target-rate R, or --place a GECO or capacity "
                     "run, reads off the β that reaches it."]


def notes(points: list[Point], left_out: list[str]) -> list[str]:
    """Where the error bars are absent and why, and the settings the frontier leaves out."""
    single = [point for point in points if point.n == 1]
    words = []
    if single and len(single) == len(points):
        words.append("One seed per β: the points have no error bars (a standard error needs two seeds; --seeds 3 "
                     "gives them).")
    elif single:
        words.append(f"Only one seed finished for β = {', '.join(beta_text(point.beta) for point in single)}: no "
                     f"error bars there.")
    if left_out:
        words.append(f"Left out (no finished seed, or no effective β recorded): {', '.join(left_out)}.")
    return words


def table_entries(points: list[Point]) -> list[tuple[Point, Optional[float], Optional[Point]]]:
    """(point, chord slope to the next point, the next point) for each point; the last has (None, None)."""
    return list(zip(points, chord_slopes(points) + [None], points[1:] + [None]))


def weight_differs(point: Point) -> bool:
    """Whether the grid's λ (as results.csv writes it: YAML, a string such as 1e-3 quoted) is not the effective β."""
    try:
        return not math.isclose(float(point.kl_weight.strip("'\"")), point.beta)
    except ValueError:
        return True


def table_columns(points: list[Point]) -> list[tuple[str, Callable[[tuple], str]]]:
    """(header, text of a table entry) of the frontier table; λ only where it differs from the effective β."""
    columns = [("β", lambda e: beta_text(e[0].beta))]
    if any(weight_differs(point) for point in points):
        columns.append(("λ (loss.kl_weight)", lambda e: e[0].kl_weight))
    return columns + [
        ("Seeds", lambda e: f"{e[0].n} of {e[0].planned}"),
        ("Rate (nats)", lambda e: plus_minus((e[0].rate, e[0].rate_se))),
        ("Distortion (nats)", lambda e: plus_minus((e[0].distortion, e[0].distortion_se))),
        ("Chord slope to the next β", lambda e: "" if e[2] is None else number(e[1]) or "undefined"),
        ("Against −β", lambda e: "" if e[2] is None else chord_words(e[1], e[0].beta, e[2].beta))]


PLACED_COLUMNS = (("Run", lambda r: r.name), ("Kind", lambda r: r.kind),
                  ("Target", lambda r: f"κ = {r.kappa:g}" if r.kind == "GECO" else
                   f"C = {r.capacity:g}" if r.kind == "capacity" else ""),
                  ("β", lambda r: f"{r.beta:.3g} (final)" if r.kind == "GECO" else beta_text(r.beta)),
                  ("Rate (nats)", lambda r: number(r.rate)), ("Distortion (nats)", lambda r: number(r.distortion)))


def page_markdown(name: str, points: list[Point], left_out: list[str], request: Request) -> str:
    """frontier.md: how to read it, the figure, the table, the targets, the placed runs and the command."""
    lines = [f"# Rate–distortion frontier of sweep '{name}'", "", READING, "", f"![{CAPTION}]({FIGURE})", ""]
    lines += [*notes(points, left_out), ""] if notes(points, left_out) else []
    if points:
        lines.append(sweep_page.markdown_table(table_entries(points), table_columns(points)))
    lines += ["## Where targets lie on the frontier", "", *[f"- {text}" for text in statements(points, request)], ""]
    if request.placed:
        lines += ["## Placed runs", "", sweep_page.markdown_table(request.placed, PLACED_COLUMNS)]
    return "\n".join(lines + ["## The command", "", f"    {request.command}", ""])


def html_section(folder: str, points: list[Point], left_out: list[str], request: Request) -> str:
    """The frontier's section of report.html, from the same parts as frontier.md, the figure embedded."""
    parts = [f"<h2>Rate–distortion frontier</h2><p>{html.escape(READING)}</p>"]
    parts += [f"<p>{html.escape(note)}</p>" for note in notes(points, left_out)]
    if points:
        parts.append(sweep_page.html_table(table_entries(points), table_columns(points)))
    parts.append("<ul>" + "".join(f"<li>{html.escape(text)}</li>" for text in statements(points, request)) + "</ul>")
    if request.placed:
        parts.append("<h3>Placed runs</h3>" + sweep_page.html_table(request.placed, PLACED_COLUMNS))
    parts.append(sweep_page.figure_html(os.path.join(folder, FIGURE), CAPTION))
    return "".join(parts) + f"<p>Made by <code>{html.escape(request.command)}</code></p>"


# ---- The outputs ---------------------------------------------------------------------------------------

def draw(folder: str, points: list[Point], rows: list[dict], request: Request) -> dict:
    """frontier.png; returns what plots.frontier drew."""
    seeded = any(point.n > 1 for point in points)
    done = [row for row in rows if row["status"] == "complete" and row.get(AXES["rate"]) is not None]
    seeds = [(row[AXES["rate"]], row[AXES["distortion"]]) for row in done] if seeded else None
    title = "Rate–distortion frontier: " + ("mean over seeds ± standard error, single seeds faint" if seeded
                                            else "one seed per β, no error bars")
    return plots.frontier([(p.beta, p.rate, p.rate_se, p.distortion, p.distortion_se) for p in points],
                          os.path.join(folder, FIGURE), title, seeds=seeds,
                          placed=[(run.label, run.rate, run.distortion) for run in request.placed])


def write_frontier(folder: str, rows: list[dict], request: Request) -> str:
    """frontier.png (when a setting finished) and frontier.md in the sweep folder; returns report.html's section."""
    points, left_out = frontier_points(rows)
    path = os.path.join(folder, FIGURE)
    if points:
        draw(folder, points, rows, request)
    elif os.path.exists(path):
        os.remove(path)  # A figure of an earlier report would not be this one.
    name = os.path.basename(folder).removeprefix("sweep_")
    atomic.atomic_write_text(os.path.join(folder, PAGE), page_markdown(name, points, left_out, request))
    return html_section(folder, points, left_out, request)

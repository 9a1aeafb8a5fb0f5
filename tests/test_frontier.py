"""sweep.py --frontier: the interpolation, the chord slopes, the refusals, the figure's data and the page.
The real frontier of a finished sweep, with a run placed beside it: tests/test_sweep.py
(test_the_frontier_of_a_finished_sweep_trains_nothing), which reuses that file's sweep."""

import json
import math
import os

import numpy as np
import pytest
from test_sweep import make_row

import sweep  # noqa: E402
from conftest import ROOT
from vae_kl.process import exits  # noqa: E402
from vae_kl.reports import (
    frontier,  # noqa: E402
    sweep_page,  # noqa: E402
)
from vae_kl.sweeps import grid

CONFIG = os.path.join(ROOT, "config.yaml")


def point(beta, rate, distortion, n=2, rate_se=0.5, distortion_se=1.0):
    return frontier.Point(beta, f"{beta:g}", n, n, rate, rate_se, distortion, distortion_se)


BETAS = (1.0, 2.0, 4.0)
MONOTONE = [point(1.0, 20.0, 100.0), point(2.0, 12.0, 110.0), point(4.0, 5.0, 130.0)]


# ---- The interpolation: log β linear in the distortion (or rate) between neighbouring points ---------

def test_a_distortion_inside_the_range_interpolates_log_beta():
    found = frontier.reach(MONOTONE, 120.0, "distortion")  # Halfway from 110 (β = 2) to 130 (β = 4).
    assert found.betas == pytest.approx((2 * math.sqrt(2),)) and found.outside is None and found.monotone
    assert frontier.reach_words(found, "The distortion 120", MONOTONE) == \
        "The distortion 120 is reached at β ≈ 2.83 on the fixed-β frontier."


def test_a_rate_inside_the_range_interpolates_log_beta():
    found = frontier.reach(MONOTONE, 8.0, "rate")  # 4/7 of the way from 12 (β = 2) to 5 (β = 4): β = 2^(1 + 4/7).
    assert found.betas == pytest.approx((2 ** (11 / 7),)) and found.monotone


def test_a_target_on_a_grid_point_is_that_beta_once():
    assert frontier.reach(MONOTONE, 110.0, "distortion").betas == (2.0,)
    assert frontier.reach(MONOTONE, 130.0, "distortion").betas == (4.0,)
    assert frontier.reach(MONOTONE, 100.0, "distortion").betas == (1.0,)


@pytest.mark.parametrize("axis, target, side, end", [("distortion", 90.0, "below", 1),
                                                     ("distortion", 140.0, "above", 4),
                                                     ("rate", 25.0, "below", 1), ("rate", 2.0, "above", 4)])
def test_a_target_outside_the_range_says_which_way_to_extend_the_grid(axis, target, side, end):
    found = frontier.reach(MONOTONE, target, axis)
    assert found.betas == () and found.outside == side
    words = frontier.reach_words(found, "T", MONOTONE)
    assert words.startswith("T lies outside the grid's range") and f"extend the grid {side} β = {end} (" in words


def test_non_monotone_means_give_every_crossing_and_say_so():
    noisy = [point(1.0, 20.0, 100.0), point(2.0, 15.0, 120.0), point(4.0, 10.0, 115.0), point(8.0, 5.0, 130.0)]
    found = frontier.reach(noisy, 117.0, "distortion")
    # By hand: t = 17/20 on [1, 2], 3/5 on [2, 4] (falling), 2/15 on [4, 8]; β = 2^t, 2^(1 + t), 2^(2 + t).
    assert found.betas == pytest.approx((2 ** 0.85, 2 ** 1.6, 2 ** (2 + 2 / 15))) and not found.monotone
    words = frontier.reach_words(found, "D = 117", noisy)
    assert "not monotone in β" in words and "crossed 3 times" in words
    once = frontier.reach(noisy, 125.0, "distortion")  # Only the last segment reaches 125: one crossing, flagged.
    assert once.betas == pytest.approx((4 * 2 ** (10 / 15),))
    assert "not monotone in β elsewhere" in frontier.reach_words(once, "D = 125", noisy)


# ---- Chord slopes ---------------------------------------------------------------------------------------

def test_chord_slopes_match_numpy():
    rng = np.random.default_rng(0)
    rates, distortions = np.sort(rng.uniform(0, 30, 6))[::-1], np.sort(rng.uniform(90, 200, 6))
    points = [point(2.0 ** i, r, d) for i, (r, d) in enumerate(zip(rates, distortions))]
    assert frontier.chord_slopes(points) == pytest.approx(list(np.diff(distortions) / np.diff(rates)))
    flat = [point(1.0, 5.0, 100.0), point(2.0, 5.0, 101.0)]
    assert frontier.chord_slopes(flat) == [None]


def test_chord_words_compare_the_slope_with_minus_beta():
    assert frontier.chord_words(-1.5, 1.0, 2.0).startswith("between −2 and −1")
    assert frontier.chord_words(-3.0, 1.0, 2.0).startswith("steeper than")
    assert frontier.chord_words(-0.5, 1.0, 2.0).startswith("flatter than")
    assert frontier.chord_words(0.5, 1.0, 2.0).startswith("positive")
    assert frontier.chord_words(None, 1.0, 2.0) == "the rate did not change"


# ---- Refusals: one `error:` line, exit status 2, nothing created ---------------------------------------

def cli(tmp_path, *args):
    return ["--config", CONFIG, "--set", f"output.dir={tmp_path / 'out'}", "--set", "data.source=mnist_embedded",
            *args]


@pytest.mark.parametrize("args, words", [
    (["--frontier", "--grid", "loss.reconstruction_reduction=sum,mean"], "--frontier sweeps loss.kl_weight only"),
    (["--frontier", "--grid", "loss.kl_weight=1,2", "--grid", "model.latent_dim=2,4"], "model.latent_dim"),
    (["--frontier", "--grid", "loss.kl_weight=1,2", "--grid", "train.seed=1,2"], "give the seeds with --seeds N"),
    (["--frontier", "--grid", "loss.kl_weight=0,1"], "--frontier needs positive numbers for loss.kl_weight"),
    (["--frontier", "--grid", "loss.kl_weight=-1,1"], "received -1"),
    (["--frontier", "--grid", "loss.kl_weight=auto,1"], "GECO and capacity runs go in with --place"),
    (["--frontier", "--grid", "loss.kl_weight=2"], "at least two loss.kl_weight values"),
    (["--grid", "loss.kl_weight=1,2", "--target-distortion", "100"], "--target-distortion is read with --frontier"),
    (["--grid", "loss.kl_weight=1,2", "--place", "somewhere"], "--place is read with --frontier only"),
    (["--frontier", "--target-distortion", "0"], "--target-distortion must be a number of nats per digit > 0"),
    (["--frontier", "--target-rate", "-3"], "--target-rate must be"),
    (["--frontier", "--target-rate", "nan"], "--target-rate must be"),
])
def test_bad_frontier_input_is_refused_before_anything_is_trained(tmp_path, capsys, args, words):
    assert sweep.main(cli(tmp_path, *args)) == exits.EXIT_USER_ERROR
    error = capsys.readouterr().err
    assert error.startswith("error: ") and error.count("\n") == 1, error
    assert words is None or words in error, error
    assert not (tmp_path / "out").exists()


def test_placing_a_missing_or_unfinished_folder_is_refused(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    unfinished = tmp_path / "unfinished"
    unfinished.mkdir()
    (unfinished / "summary.json").write_text(json.dumps({"status": "running"}))
    for place, words in ((tmp_path / "missing", "no such folder"), (tmp_path / "empty", "holds neither summary.json"),
                         (unfinished, "the run is not finished")):
        assert sweep.main(cli(tmp_path, "--frontier", "--place", str(place))) == 2
        error = capsys.readouterr().err
        assert error.startswith(f"error: --place {place}") and words in error and error.count("\n") == 1, error
    assert not (tmp_path / "out").exists()


# ---- --frontier plans the plain sweep's runs: same spec, same folder -----------------------------------

def test_frontier_changes_no_spec_only_defaults(tmp_path, capsys):
    plain = grid.make_plan(sweep.parse_args(cli(tmp_path, "--grid", "loss.kl_weight=1,4", "--seeds", "2")))
    again = grid.make_plan(sweep.parse_args(cli(tmp_path, "--grid", "loss.kl_weight=1,4", "--seeds", "2",
                                                 "--frontier")))
    assert (again.spec, again.folder, [r.label for r in again.runs]) == (plain.spec, plain.folder,
                                                                         [r.label for r in plain.runs])
    assert plain.frontier is None and again.frontier.command.endswith("--seeds 2 --frontier")
    default = grid.make_plan(sweep.parse_args(cli(tmp_path, "--frontier")))
    assert default.grid == {"loss.kl_weight": list(grid.FRONTIER_GRID), "train.seed": [1337, 1338, 1339]}
    # A finished one-seed plain sweep (no --seeds) keeps its one seed when --frontier is added to its arguments.
    one = grid.make_plan(sweep.parse_args(cli(tmp_path, "--grid", "loss.kl_weight=1,4")))
    grid.prepare_folder(one).close()
    capsys.readouterr()
    kept = grid.make_plan(sweep.parse_args(cli(tmp_path, "--grid", "loss.kl_weight=1,4", "--frontier")))
    assert (kept.spec, kept.folder) == (one.spec, one.folder)
    assert "holds this grid's sweep with one seed" in capsys.readouterr().out


def test_frontier_reads_kl_weights_as_config_does(tmp_path):
    plan = grid.make_plan(sweep.parse_args(cli(tmp_path, "--frontier", "--grid", "loss.kl_weight=1e-3,0.5",
                                                "--seeds", "1")))
    assert [run.cfg.loss.kl_weight for run in plan.runs] == [0.001, 0.5]  # YAML reads 1e-3 as text; config a number.


# ---- The figure draws the rows' means; the page and the placed runs -----------------------------------

def frontier_rows(seeds=2):
    """Synthetic result rows: β = 1, 2, 4 with `seeds` seeds each, rate falling and distortion rising in β."""
    rows = []
    for beta, rate, distortion in ((1.0, 20.0, 100.0), (2.0, 12.0, 110.0), (4.0, 5.0, 130.0)):
        for seed in range(seeds):
            row = make_row(f"kl_weight={beta:g}", beta, seed, distortion + rate + seed, kl=rate - seed)
            rows.append({**row, "loss.kl_weight": f"{beta:g}"})
    return rows


def test_the_figure_draws_the_means_the_errors_and_the_slopes(tmp_path):
    rows = frontier_rows()
    placed = [frontier.Placed("geco", "GECO", 10.0, 115.0, 2.5, kappa=115.0)]
    drawn = frontier.draw(str(tmp_path), frontier.frontier_points(rows)[0], rows, frontier.Request(tuple(placed)))
    settings = sweep_page.aggregate([row for row in rows if row["status"] == "complete"])  # rate_distortion.png's.
    assert drawn["rate"] == pytest.approx([s["kl_nats"][0] for s in settings])
    assert drawn["distortion"] == pytest.approx([s["reconstruction_nats"][0] for s in settings])
    assert drawn["rate_se"] == pytest.approx([s["kl_nats"][1] for s in settings])
    assert drawn["distortion_se"] == pytest.approx([s["reconstruction_nats"][1] for s in settings])
    assert drawn["slopes"] == pytest.approx([-1.0, -2.0, -4.0]) and drawn["beta"] == [1.0, 2.0, 4.0]
    assert sorted(map(tuple, drawn["seeds"])) == sorted((r["kl_nats"], r["reconstruction_nats"]) for r in rows)
    assert drawn["placed"] == [(placed[0].label, 10.0, 115.0)] and "κ = 115, final β = 2.5" in placed[0].label
    assert (tmp_path / "frontier.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_one_seed_draws_no_bars_and_the_page_says_so(tmp_path):
    rows = frontier_rows(seeds=1)
    section = frontier.write_frontier(str(tmp_path), rows, frontier.Request(command="python sweep.py --frontier"))
    drawn = frontier.draw(str(tmp_path), frontier.frontier_points(rows)[0], rows, frontier.Request())
    assert drawn["rate_se"] == [0.0] * 3 and drawn["seeds"] == []
    page = (tmp_path / "frontier.md").read_text(encoding="utf-8")
    assert "One seed per β: the points have no error bars" in page and "One seed per β" in section
    assert "No target given" in page and "    python sweep.py --frontier" in page


def write_summary(folder, **blocks):
    folder.mkdir(parents=True)
    summary = {"status": "complete", "objective": {"effective_beta": 1.0},
               "validation": {"kl_nats": 9.0, "reconstruction_nats": 118.0}, **blocks}
    (folder / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    return folder


def test_placed_runs_are_read_and_labelled_and_their_targets_stated(tmp_path):
    geco = write_summary(tmp_path / "geco", geco={"final_beta": 4.1, "target_distortion": 120.0})
    capacity = write_summary(tmp_path / "cap", capacity={"target_rate": 8.0})
    write_summary(tmp_path / "sweep_s" / "kl_weight-3", objective={"effective_beta": 3.0})
    (tmp_path / "sweep_s" / "sweep.yaml").write_text("grid: {}\n", encoding="utf-8")
    placed = [*frontier.read_placed(geco), *frontier.read_placed(capacity), *frontier.read_placed(tmp_path / "sweep_s")]
    assert [(run.kind, run.beta, run.kappa, run.capacity) for run in placed] == [
        ("GECO", 4.1, 120.0, None), ("capacity", None, None, 8.0), ("fixed β", 3.0, None, None)]
    assert [run.name for run in placed] == ["geco", "cap", "s/kl_weight-3"]
    assert placed[2].label == "s/kl_weight-3: β = 3" and placed[1].label == "cap: capacity, C = 8"
    said = frontier.statements(MONOTONE, frontier.Request(tuple(placed)))
    assert said[0].startswith("κ = 120 is reached at β ≈ 2.83 on the fixed-β frontier; GECO chose β = 4.1 (geco")
    assert said[1].startswith(f"C = 8 is reached at β ≈ {2 ** (11 / 7):.3g} on the fixed-β frontier; the capacity run")
    assert len(said) == 2  # The fixed-β run has no target.
    held = write_summary(tmp_path / "held", geco={"final_beta": 1.0, "target_distortion": 120.0,
                                                  "held_to_the_end": True})
    (run,) = frontier.read_placed(held)
    said = frontier.statements(MONOTONE, frontier.Request((run,)))
    assert run.held and "; GECO never released β from its start, 1: the training reconstruction" in said[0]
    targets = frontier.statements(MONOTONE, frontier.Request(tuple(placed), target_distortion=90.0, target_rate=8.0))
    assert targets[0].startswith("The distortion 90 lies outside") and targets[1].startswith("The rate 8 is reached")


def test_the_page_holds_the_table_and_chords(tmp_path):
    rows = frontier_rows()
    frontier.write_frontier(str(tmp_path), rows, frontier.Request(command="python sweep.py --frontier"))
    page = (tmp_path / "frontier.md").read_text(encoding="utf-8")
    points, _ = frontier.frontier_points(rows)
    slopes = frontier.chord_slopes(points)
    for p, slope in zip(points, slopes + [None]):
        line = next(line for line in page.splitlines() if line.startswith(f"| {p.beta:g} |"))
        assert f"{p.rate:.2f} ± {p.rate_se:.2f}" in line and f"{p.distortion:.2f} ± {p.distortion_se:.2f}" in line
        assert slope is None or f"{slope:.2f}" in line
    assert "exchange rate β" in page and "![" in page and "(frontier.png)" in page
    assert "λ (loss.kl_weight)" not in page  # λ = β here (sum/sum); with mean reconstruction it is not:
    scaled = [{**row, "effective_beta": row["effective_beta"] * 784} for row in rows]
    assert "λ (loss.kl_weight)" in frontier.page_markdown("s", frontier.frontier_points(scaled)[0], [],
                                                          frontier.Request())

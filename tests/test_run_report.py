"""A run's result at a glance: the console block and report.html, built from a fake run folder."""

import base64
import copy
import json
import os
import re
import subprocess
import sys

import pytest
from PIL import Image

from conftest import ROOT
from vae_kl.process import atomic
from vae_kl.reports import run_page
from vae_kl.runs import folders

# Shaped like a real summary.json of a healthy β = 1 run with two latent units (keys as evaluate.py writes them).
SUMMARY = {
    "status": "complete", "dataset": "mnist_embedded", "train_examples": 512, "validation_examples": 1000,
    "epochs_planned": 2, "epochs_completed": 2, "precision": "float32",
    "objective": {"formula": "loss = 1·[Σ BCE + 1·KL]", "meaning": "the negative ELBO (β = 1)",
                  "effective_beta": 1.0, "beta_norm": 0.002551020408163265, "loss_scale": 1.0, "kl_weight": 1.0,
                  "num_pixels": 784, "latent_dim": 2, "likelihood": {"name": "bernoulli"},
                  "prior": {"name": "standard_normal", "kl": "closed form"}},
    "notes": ["NOTE: binary cross-entropy on grey-level pixels is not a normalised likelihood.",
              "WARNING: a <tricky> note & its markup stay text."],
    "validation": {"examples": 1000, "neg_elbo_nats": 164.23, "neg_elbo_bits_per_dim": 0.3022,
                   "reconstruction_nats": 158.91, "kl_nats": 5.32, "kl_estimator": "closed form",
                   "kl_per_dim_nats": [2.9, 2.42], "iwae_nll_nats": 161.87, "iwae_nll_bits_per_dim": 0.2979,
                   "iwae_k": 50, "mutual_information_nats": 4.12, "mutual_information_cap_nats": 6.907755278982137,
                   "mutual_information_examples": 1000, "information_per_unit_nats": [2.3, 1.9],
                   "signal_to_noise_per_unit": [40.1, 25.3], "informative_units": 2, "marginal_kl_nats": 1.2,
                   "active_units": 2, "latent_dim": 2, "posterior_mean_variance": [0.93, 0.88],
                   "reconstruction_spread": 0.61, "prior": {"name": "standard_normal", "kl": "closed form"}},
    "collapse": {"state": "healthy", "detected": False, "informative_units": 2,
                 "reason": "healthy: every latent unit carries information (I(x; z) = 4.120 nats ...).",
                 "advice": "Nothing to change: every unit of the code is in use."},
}
FIGURES = ("reconstructions.png", "loss_curves.png", "kl_per_dim.png")  # The others are missing: skipped.


def fake_run(tmp_path, summary=SUMMARY, figures=FIGURES):
    """A run folder with summary.json and small PNGs of different colours (so each one's bytes differ)."""
    run_dir = tmp_path / "bernoulli_rec-sum_fake"
    run_dir.mkdir()
    (run_dir / "summary.json").write_text(json.dumps(summary), encoding="utf-8")
    for i, name in enumerate(figures):
        Image.new("RGB", (30 + i, 20), (40 * i, 100, 200)).save(run_dir / name)
    return str(run_dir)


def variant(state, informative, advice, **objective):
    summary = copy.deepcopy(SUMMARY)
    summary["collapse"].update(state=state, detected=state == "collapsed", informative_units=informative,
                               advice=advice, reason=f"{state}: the numbers in words.")
    summary["validation"]["informative_units"] = informative
    summary["objective"].update(objective)
    return summary


def embedded(page):
    """The PNG bytes of every data: URI image on the page."""
    return [base64.b64decode(uri) for uri in re.findall(r'src="data:image/png;base64,([^"]+)"', page)]


def test_the_page_shows_the_verdict_objective_notes_and_each_figure_once(tmp_path):
    run_dir = fake_run(tmp_path)
    path = run_page.write(run_dir)
    assert path == os.path.join(run_dir, "report.html")
    with open(path, encoding="utf-8") as handle:
        page = handle.read()
    assert "HEALTHY" in page and "both latent units carry information" in page
    assert "Nothing to change: every unit of the code is in use." in page
    assert "healthy: every latent unit carries information" in page  # The full reason, not only the sentence.
    assert "loss = 1·[Σ BCE + 1·KL]" in page and "the negative ELBO (β = 1)" in page
    assert re.search(r"Effective β</th><td>1</td>", page) and "0.002551" in page  # effective β and β_norm
    assert "binary cross-entropy on grey-level pixels" in page
    assert "a &lt;tricky&gt; note &amp; its markup" in page and "<tricky>" not in page
    assert "mnist_embedded" in page and ">512<" in page and ">1000<" in page
    assert page.count("data:image/png") == len(FIGURES)
    pngs = [open(os.path.join(run_dir, name), "rb").read() for name in FIGURES]
    assert embedded(page) == pngs  # Each exactly once, in the reading order of run_page.FIGURES.
    for name, caption in run_page.FIGURES:
        assert (caption in page) == (name in FIGURES), name  # Missing figures leave no caption behind.


def test_the_page_needs_no_network_and_lists_every_validation_number(tmp_path):
    page = run_page.html_page(SUMMARY, fake_run(tmp_path))
    sources = re.findall(r'(?:src|href)="([^"]*)"', page)
    assert sources and all(source.startswith("data:") for source in sources)
    assert "http" not in page.replace("data:image", "")
    for key in SUMMARY["validation"]:
        assert f"validation.{key}" in page, key
    assert "164.2" in page and "4.12" in page and "2.3, 1.9" in page
    assert "img{max-width:100%" in page  # Figures shrink to a 1280-pixel screen rather than scroll.


def test_an_unknown_figure_is_shown_too(tmp_path):
    run_dir = fake_run(tmp_path, figures=("samples.png", "extra_plot.png"))
    page = run_page.html_page(SUMMARY, run_dir)
    assert page.count("data:image/png") == 2 and "extra_plot.png" in page
    assert page.index("samples.png") < page.index("extra_plot.png")


def test_the_console_block_is_short_and_plain(tmp_path):
    run_dir = fake_run(tmp_path)
    lines = run_page.console_lines(SUMMARY, run_dir, os.path.join(run_dir, "report.html"))
    assert lines[0] == "Result on 1000 validation digits (β = 1, the true ELBO):"
    assert lines[1] == "  −ELBO 164.2 nats per digit = reconstruction 158.9 + KL 5.3; IWAE bound (k = 50) 161.9"
    assert lines[2] == ("  The code carries 4.1 nats of information about each digit (I(x; z); at most 6.9 can be "
                        "shown here).")
    assert lines[3] == "  HEALTHY: both latent units carry information."
    assert lines[4] == "  Advice: Nothing to change: every unit of the code is in use."
    assert lines[5] == f"  Figures: {run_dir}/report.html (and the PNGs beside it)"
    assert len(lines) == 6 and "(" not in lines[3]  # One sentence for the state, no nested reasoning.


def test_publish_writes_the_page_and_prints_the_block(tmp_path, capsys):
    run_dir = fake_run(tmp_path)
    page = run_page.publish(run_dir, SUMMARY)
    out = capsys.readouterr().out
    assert os.path.isfile(page) and out.splitlines() == run_page.console_lines(SUMMARY, run_dir, page)


def test_a_collapsed_run_says_so_with_its_beta_and_advice(tmp_path):
    advice = "Lower β: effective β = 784 charges 784 nats of reconstruction for every nat of information in z."
    summary = variant("collapsed", 0, advice, effective_beta=784.0, beta_norm=2.0, meaning="a β-VAE objective")
    summary["validation"].update(mutual_information_nats=0.0001, kl_nats=0.012, neg_elbo_nats=543.2,
                                 reconstruction_nats=543.188)
    run_dir = fake_run(tmp_path, summary)
    lines = run_page.console_lines(summary, run_dir)
    assert lines[0] == "Result on 1000 validation digits (β = 1, the true ELBO; trained with effective β = 784):"
    assert lines[1].startswith("  −ELBO 543.2 nats per digit = reconstruction 543.2 + KL 0.012;")
    assert "carries 0 nats of information" in lines[2]
    assert lines[3] == "  COLLAPSED: the code tells the decoder almost nothing about the digit."
    assert lines[4] == f"  Advice: {advice}"
    assert lines[5] == f"  Figures: the PNGs in {run_dir}"  # No page was named: it was not written.
    page = open(run_page.write(run_dir), encoding="utf-8").read()
    assert '<span class="state collapsed">COLLAPSED</span>' in page and "784" in page and advice in page
    assert "<title>Run bernoulli_rec-sum_fake: COLLAPSED</title>" in page


@pytest.mark.parametrize("informative, latent_dim, sentence", [
    (1, 2, "PARTIAL: only 1 of 2 latent units carries information; the other carries almost none."),
    (2, 8, "PARTIAL: only 2 of 8 latent units carry information; the other 6 carry almost none."),
    (0, 8, "PARTIAL: no single latent unit carries much information on its own."),
])
def test_a_partial_run_counts_its_units(tmp_path, informative, latent_dim, sentence):
    advice = "Nothing is needed if 1 unit(s) are enough for you."
    summary = variant("partial", informative, advice)
    summary["validation"]["latent_dim"] = latent_dim
    run_dir = fake_run(tmp_path, summary)
    assert run_page.console_lines(summary, run_dir)[3] == f"  {sentence}"
    page = run_page.html_page(summary, run_dir)
    assert '<span class="state partial">PARTIAL</span>' in page and advice in page


def test_one_or_many_healthy_units_read_naturally():
    assert run_page.state_sentence("healthy", 1, 1) == "HEALTHY: the one latent unit carries information."
    assert run_page.state_sentence("healthy", 8, 8) == "HEALTHY: all 8 latent units carry information."


def test_an_older_or_thinner_summary_still_makes_a_page(tmp_path):
    summary = {"status": "complete", "collapse": {"detected": True}}  # Before `state`; no numbers, no objective.
    run_dir = fake_run(tmp_path, summary, figures=())
    lines = run_page.console_lines(summary, run_dir)
    assert lines[1] == "  No validation numbers in summary.json." and lines[2].startswith("  COLLAPSED")
    page = run_page.html_page(summary, run_dir)
    assert "does not describe the objective" in page and "holds no figures" in page and "data:image" not in page
    no_verdict = run_page.console_lines({"validation": SUMMARY["validation"]}, run_dir)
    assert "  No verdict: summary.json has none." in no_verdict and not any("Advice" in x for x in no_verdict)


def test_a_folder_without_a_summary_is_one_clear_error(tmp_path):
    with pytest.raises(folders.RunFolderError, match="no readable summary.json"):
        run_page.write(str(tmp_path))


def test_a_page_that_cannot_be_written_is_one_warning_and_the_block_still_prints(tmp_path, capsys, monkeypatch):
    run_dir = fake_run(tmp_path)

    def full_disk(path, text):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(atomic, "atomic_write_text", full_disk)
    assert run_page.publish(run_dir, SUMMARY) is None
    captured = capsys.readouterr()
    assert captured.err.count("\n") == 1 and captured.err.startswith("warning: ")
    assert "No space left on device" in captured.err and "evaluate.py --run" in captured.err
    assert "HEALTHY" in captured.out and f"Figures: the PNGs in {run_dir}" in captured.out


def test_the_module_loads_without_tensorflow():
    code = ("import sys; from vae_kl.reports import run_page; "
            "sys.exit(1 if 'tensorflow' in sys.modules or 'keras' in sys.modules else 0)")
    assert subprocess.run([sys.executable, "-c", code], cwd=ROOT, timeout=120).returncode == 0


def test_an_estimate_within_its_noise_reads_as_zero_not_as_a_negative_number(tmp_path):
    summary = copy.deepcopy(SUMMARY)
    summary["validation"].update(mutual_information_nats=-1.527e-07, mutual_information_se_nats=3.1e-05,
                                 information_per_unit_nats=[2.3, -0.004], information_per_unit_se_nats=[0.05, 0.01],
                                 decoder_use_nats=-0.045, decoder_use_se_nats=0.031)
    page = run_page.html_page(summary, fake_run(tmp_path, summary))
    assert "0 within 2 standard errors (-1.5e-07, s.e. 3.1e-05)" in page
    assert "2.3, 0 within 2 standard errors (-0.004, s.e. 0.01)" in page
    assert "0 within 2 standard errors (-0.045, s.e. 0.031)" in page
    assert "-1.527e-07" not in page
    summary["validation"].update(decoder_use_nats=-0.2, decoder_use_se_nats=0.031)  # Outside the noise: as it is.
    (tmp_path / "b").mkdir()
    assert "-0.2" in run_page.html_page(summary, fake_run(tmp_path / "b", summary))


@pytest.mark.parametrize("settings", [{}, {"loss__likelihood": "gaussian", "loss__gaussian_sigma": "optimal"}])
def test_every_number_the_evaluation_writes_is_named_in_words(settings):
    import numpy as np

    from conftest import build_vae
    from vae_kl.evaluation import metrics

    x = np.random.default_rng(0).uniform(size=(20, 28, 28, 1)).astype("float32")
    validation, _ = metrics.compute_metrics(build_vae(**settings), x, k=2)
    written = {*validation, "available_examples"}  # evaluate_run adds how many digits the data holds.
    assert written - set(dict(run_page.VALIDATION_LABELS)) == set()

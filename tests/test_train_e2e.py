"""End to end on the real embedded digits: the tutorial's loss learns, the per-pixel mean collapses."""

import csv
import json
import math
import os
import re

import numpy as np
import pytest
import yaml

import evaluate
import train
from conftest import quick_overrides, quick_sets, run_cli
from vae_kl.data import sources
from vae_kl.evaluation import metrics
from vae_kl.evaluation import verdict as verdicts
from vae_kl.spec import config
from vae_kl.training import machine

# In-process runs: TensorFlow has started, so batch slices would run without their own threads.
COLLAPSE_SETTINGS = ["data.source=mnist_embedded", "train.epochs=4", "train.batch_size=32", "evaluation.iwae_k=5",
                     "train.batch_shards=1"]


def run_dirs(output_dir):
    return sorted(os.path.join(output_dir, d) for d in os.listdir(output_dir) if not d.startswith("."))


def summary_of(run_dir):
    with open(os.path.join(run_dir, "summary.json")) as handle:
        return json.load(handle)


def train_in_process(output_dir, *sets):
    args = []
    for item in [*sets, f"output.dir={output_dir}"]:
        args += ["--set", item]
    return train.main(args)


@pytest.fixture(scope="module")
def collapse_runs(tmp_path_factory):
    """The question in two runs: BCE summed over pixels (the tutorial) and averaged (the user's change)."""
    found = {}
    for reduction in ("sum", "mean"):
        out = tmp_path_factory.mktemp(reduction)
        assert train_in_process(out, *COLLAPSE_SETTINGS, f"loss.reconstruction_reduction={reduction}") == 0
        (found[reduction],) = run_dirs(out)
    return found


def test_the_phase_clock_agrees_with_the_epoch_rows(collapse_runs):
    summary = summary_of(collapse_runs["sum"])
    phases = summary["timing"]["phases_seconds"]
    assert set(phases) == {"startup", "gradient_steps", "validation", "between_epochs", "tracing", "evaluation"}
    assert all(value >= 0 for value in phases.values()) and phases["gradient_steps"] > 0
    with open(os.path.join(collapse_runs["sum"], "metrics.csv")) as handle:
        rows = list(csv.DictReader(handle))
    # Each row's seconds run from the epoch's start to its end: the steps, then the validation pass.
    epochs = sum(float(row["seconds"]) for row in rows)
    inside = phases["gradient_steps"] + phases["validation"] + phases["tracing"]
    assert abs(epochs - inside) <= 0.05 * epochs + 0.2, (epochs, phases)


def test_phase_clock_splits_each_epoch_and_takes_tracing_from_the_first(monkeypatch):
    from vae_kl.training import callbacks

    clock, now = callbacks.PhaseClock(), [0.0]
    monkeypatch.setattr(callbacks.time, "perf_counter", lambda: now[0])

    def epoch(steps, validation, between):
        clock.on_epoch_begin(len(clock.epochs))
        now[0] += steps
        if validation is not None:
            clock.on_test_begin()
            now[0] += validation
            clock.on_test_end()
        clock.on_epoch_end(len(clock.epochs))
        now[0] += between

    epoch(9.0, 2.0, 0.5)  # The first epoch traces: 7 s of steps and 1 s of validation more than the others.
    epoch(2.0, 1.0, 0.25)
    epoch(2.0, 1.0, 0.25)
    clock.on_train_end()
    assert clock.epochs[0] == {"steps": 9.0, "validation": 2.0, "between": 0.5}
    assert clock.totals() == {"gradient_steps": 6.0, "validation": 3.0, "between_epochs": 1.0, "tracing": 8.0}
    clock = callbacks.PhaseClock()  # epoch() uses this one now.
    epoch(3.0, None, 1.0)  # No validation data; one epoch: tracing cannot be told apart.
    clock.on_train_end()
    assert clock.totals() == {"gradient_steps": 3.0, "validation": 0.0, "between_epochs": 1.0, "tracing": None}


def test_a_run_writes_every_output(collapse_runs):
    run_dir = collapse_runs["sum"]
    for name in ["config.yaml", "metrics.csv", "model.keras", "summary.json", "reconstructions.png",
                 "latent_space.png", "latent_clusters.png", "loss_curves.png", "kl_schedule.png",
                 "kl_per_dim.png", "rate_distortion.png", "samples.png"]:
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    assert sorted(os.listdir(os.path.join(run_dir, "epochs"))) == [
        f"reconstructions_epoch_{e:03d}.png" for e in range(1, 5)]
    assert not os.path.exists(os.path.join(run_dir, "state"))  # The checkpoint goes once the run is complete.
    with open(os.path.join(run_dir, "metrics.csv")) as handle:
        rows = list(csv.DictReader(handle))
    assert [int(r["epoch"]) for r in rows] == [1, 2, 3, 4]
    assert {"loss", "val_loss", "val_neg_elbo", "kl_weight"} <= set(rows[0])
    with open(os.path.join(run_dir, "config.yaml")) as handle:
        assert yaml.safe_load(handle)["train"]["batch_size"] == 32
    summary = summary_of(run_dir)
    assert summary["status"] == "complete" and summary["dataset"] == "mnist_embedded"
    assert summary["epochs_completed"] == 4
    for key in ["neg_elbo_nats", "kl_nats", "active_units", "iwae_nll_nats", "iwae_k", "mutual_information_nats"]:
        assert key in summary["validation"], key
    collapse = summary["collapse"]
    assert isinstance(collapse["detected"], bool) and collapse["reason"] and collapse["advice"]
    assert collapse["state"] in ("healthy", "partial", "collapsed")
    assert collapse["detected"] == (collapse["state"] == "collapsed")
    assert summary["objective"]["prior"]["name"] == "standard_normal"


def test_tensorboard_holds_every_epochs_terms_units_and_grid(collapse_runs):
    from tensorboard.backend.event_processing import event_accumulator

    def read(folder):
        accumulator = event_accumulator.EventAccumulator(folder, size_guidance={"tensors": 0, "images": 0})
        accumulator.Reload()
        return accumulator

    board = os.path.join(collapse_runs["sum"], "tensorboard")
    train_events, validation = read(os.path.join(board, "train")), read(os.path.join(board, "validation"))
    for tag in ("loss", "kl", "neg_elbo", "kl_weight", "information_per_unit/0", "kl_per_unit/1"):
        assert [event.step for event in train_events.Tensors(tag)] == [1, 2, 3, 4], tag
    assert [event.step for event in validation.Tensors("neg_elbo")] == [1, 2, 3, 4]
    assert len(validation.Tags()["tensors"]) >= 4 and "reconstructions" in str(validation.Tags())
    final = read(os.path.join(board, "evaluation"))
    value = float(np.asarray(tf_value(final.Tensors("neg_elbo_nats")[-1])))
    assert value == pytest.approx(summary_of(collapse_runs["sum"])["validation"]["neg_elbo_nats"], rel=1e-6)


def tf_value(event):
    import tensorflow as tf

    return tf.make_ndarray(event.tensor_proto)


def test_a_code_rescaled_by_005_or_20_keeps_its_verdict_and_information(collapse_runs):
    # Same function, different scale of z: z' = c·z (encoder's last layers), decoder's first layer reads z'/c.
    import keras

    vae = keras.saving.load_model(os.path.join(collapse_runs["sum"], "model.keras"), safe_mode=True)
    x = sources.load_digits(config.DataConfig(source="mnist_embedded"), seed=1337).x_val[:500]
    before, _ = metrics.compute_metrics(vae, x, 5)
    context = {"effective_beta": 1.0, "kl_weight": 1.0, "reconstruction_reduction": "sum", "likelihood": "bernoulli",
               "gaussian_sigma": None, "steps": 500}
    state = verdicts.diagnose(before, context)["state"]
    for factor in (0.05, 20.0):
        scaled = keras.saving.load_model(os.path.join(collapse_runs["sum"], "model.keras"), safe_mode=True)
        mean_kernel, mean_bias = scaled.encoder.get_layer("z_mean").get_weights()
        scaled.encoder.get_layer("z_mean").set_weights([factor * mean_kernel, factor * mean_bias])
        var_kernel, var_bias = scaled.encoder.get_layer("z_log_var").get_weights()
        scaled.encoder.get_layer("z_log_var").set_weights([var_kernel, var_bias + 2 * math.log(factor)])
        first = scaled.decoder.layers[1]
        kernel, bias = first.get_weights()
        first.set_weights([kernel / factor, bias])
        after, _ = metrics.compute_metrics(scaled, x, 5)
        np.testing.assert_allclose(np.asarray(scaled(x[:8])), np.asarray(vae(x[:8])), atol=1e-4)
        assert after["mutual_information_nats"] == pytest.approx(before["mutual_information_nats"], rel=1e-3)
        assert verdicts.diagnose(after, context)["state"] == state != "collapsed"
    assert before["active_units"] >= 1


def test_a_short_beta_1_run_is_collapsed_and_told_to_train_longer(tmp_path, capsys):
    # The case a learner meets first: KL from the codes drifting off the prior, almost no information.
    summary = train.run(None, quick_overrides(tmp_path, "data.limit=1000", "train.epochs=3", "train.batch_size=128",
                                              "evaluation.max_examples=1000"))
    assert summary["collapse"]["state"] == "collapsed", summary["collapse"]["reason"]
    assert summary["validation"]["mutual_information_nats"] < 0.2
    assert "Train longer" in summary["collapse"]["advice"]
    # The run at a glance: report.html with the verdict and every figure, and the short block on the console.
    (run_dir,) = run_dirs(tmp_path)
    with open(os.path.join(run_dir, "report.html"), encoding="utf-8") as handle:
        page = handle.read()
    assert '<span class="state collapsed">COLLAPSED</span>' in page and summary["collapse"]["advice"] in page
    figures = [name for name in os.listdir(run_dir) if name.endswith(".png")]
    assert len(figures) >= 7 and page.count("data:image/png") == len(figures)
    console = capsys.readouterr().out
    block = console.splitlines()[-6:]
    assert block[0].startswith("Result on 1000 validation digits") and block[3].startswith("  COLLAPSED: ")
    # The live watch: every epoch's information in metrics.csv and on its line, and the collapse said once.
    with open(os.path.join(run_dir, "metrics.csv"), encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert all(0 <= float(row["val_information"]) < 7 and "val_information_unit_1" in row for row in rows)
    assert console.count("- val_information: ") == 3
    assert re.search(r"Epoch \d: so far the code carries [0-9.e-]+ nats about the digit: collapsed for now", console)
    assert block[1].startswith(f"  −ELBO {summary['validation']['neg_elbo_nats']:.1f} nats per digit")
    assert block[-1] == f"  Figures: {os.path.join(run_dir, 'report.html')} (and the PNGs beside it)"


def test_the_per_pixel_mean_collapses_and_the_run_says_so(collapse_runs):
    summary = summary_of(collapse_runs["mean"])
    assert summary["objective"]["effective_beta"] == pytest.approx(784)
    assert summary["collapse"]["detected"] is True and summary["collapse"]["state"] == "collapsed"
    assert summary["collapse"]["reason"].startswith("posterior collapse")
    assert "Lower β" in summary["collapse"]["advice"] and "0.00127551" in summary["collapse"]["advice"]  # λ = 1/784
    assert summary["validation"]["mutual_information_nats"] < 0.05
    assert summary["validation"]["kl_nats"] < 0.05
    assert summary["validation"]["active_units"] == 0
    assert summary["validation"]["reconstruction_spread"] < 0.05  # Every reconstruction nearly the same image.


def test_the_tutorials_sum_does_not_collapse(collapse_runs):
    summary = summary_of(collapse_runs["sum"])
    assert summary["objective"]["effective_beta"] == pytest.approx(1)
    assert summary["collapse"]["detected"] is False and summary["collapse"]["state"] in ("healthy", "partial")
    assert summary["collapse"]["informative_units"] >= 1
    assert summary["validation"]["mutual_information_nats"] > 1.0
    assert summary["validation"]["active_units"] >= 1
    assert summary["validation"]["kl_nats"] > 1.0
    spread_sum = summary["validation"]["reconstruction_spread"]
    assert spread_sum > 10 * summary_of(collapse_runs["mean"])["validation"]["reconstruction_spread"]


def test_neg_elbo_is_its_two_terms(collapse_runs):
    validation = summary_of(collapse_runs["sum"])["validation"]
    assert validation["neg_elbo_nats"] == pytest.approx(validation["reconstruction_nats"] + validation["kl_nats"])
    assert validation["neg_elbo_bits_per_dim"] == pytest.approx(validation["neg_elbo_nats"] / (784 * math.log(2)))
    assert sum(validation["kl_per_dim_nats"]) == pytest.approx(validation["kl_nats"])


def test_evaluate_reproduces_the_reported_numbers(collapse_runs):
    run_dir = collapse_runs["sum"]
    before = summary_of(run_dir)["validation"]
    figures = sorted(name for name in os.listdir(run_dir) if name.endswith(".png"))
    for name in figures:  # Every figure of the run is redrawn, those drawn from metrics.csv included.
        os.remove(os.path.join(run_dir, name))
    assert evaluate.main(["--run", run_dir]) == 0
    assert sorted(name for name in os.listdir(run_dir) if name.endswith(".png")) == figures
    assert {"loss_curves.png", "kl_schedule.png", "information.png", "reconstructions.png"} <= set(figures)
    after = summary_of(run_dir)["validation"]
    for key in ["neg_elbo_nats", "kl_nats", "iwae_nll_nats", "mutual_information_nats", "reconstruction_spread"]:
        assert after[key] == pytest.approx(before[key], rel=1e-4), key
    assert after["active_units"] == before["active_units"]


def test_iwae_bound_is_at_least_the_elbo_and_tightens_with_k(collapse_runs):
    import keras

    import model  # noqa: F401  Registers the classes for loading.
    from vae_kl.data import sources

    vae = keras.saving.load_model(os.path.join(collapse_runs["sum"], "model.keras"), safe_mode=True)
    x = sources.load_digits(config.DataConfig(source="mnist_embedded"), seed=1337).x_val[:300]
    bounds = {}
    for k in (1, 10, 100):
        validation, _ = metrics.compute_metrics(vae, x, k)
        bounds[k] = validation["iwae_nll_nats"]
        assert validation["iwae_nll_nats"] <= validation["neg_elbo_nats"] + 0.05
    assert bounds[100] <= bounds[10] <= bounds[1]
    assert bounds[100] < bounds[1] - 0.1  # With an active posterior, more samples give a visibly tighter bound.


def test_evaluate_refuses_a_folder_without_a_run(tmp_path, capsys):
    assert evaluate.main(["--run", str(tmp_path)]) == 2
    assert "holds no finished run" in capsys.readouterr().err


def test_a_finished_run_is_never_overwritten(tmp_path):
    sets = quick_sets(tmp_path)
    assert train.main(sets + ["--set", "output.run_name=same"]) == 0
    first = os.path.join(tmp_path, "same", "summary.json")
    stamp = os.path.getmtime(first)
    assert train.main(sets + ["--set", "output.run_name=same"]) == 0
    assert os.path.getmtime(first) == stamp
    assert summary_of(os.path.join(tmp_path, "same-2"))["status"] == "complete"


# Every option at least once, two or three independent ones to a run (each run costs a few seconds).
@pytest.mark.parametrize("extra", [
    ["loss.likelihood=gaussian", "loss.gaussian_sigma=0.1", "loss.kl_schedule=linear", "loss.kl_warmup=5",
     "loss.kl_warmup_unit=steps"],
    ["loss.likelihood=gaussian", "loss.gaussian_sigma=learned", "loss.kl_schedule=cyclical", "loss.kl_cycles=2",
     "train.epochs=2"],
    ["loss.likelihood=gaussian", "loss.gaussian_sigma=optimal", "loss.free_bits=0.5", "train.precision=mixed_float16"],
    ["loss.likelihood=continuous_bernoulli", "model.latent_dim=5", "loss.kl_reduction=mean"],
    ["model.prior=mixture", "model.prior_components=3", "data.binarize=dynamic"],
    ["model.prior=vamp", "model.prior_components=3", "train.precision=mixed_bfloat16"],
])
def test_every_option_trains_without_nan(tmp_path, extra):
    assert train.main(quick_sets(tmp_path, *extra)) == 0
    (run_dir,) = run_dirs(tmp_path)
    summary = summary_of(run_dir)
    assert summary["status"] == "complete"
    numbers = [summary["validation"][k] for k in ("neg_elbo_nats", "iwae_nll_nats", "kl_nats")]
    assert all(np.isfinite(numbers))
    assert summary["validation"]["iwae_nll_nats"] <= summary["validation"]["neg_elbo_nats"] + 0.05
    with open(os.path.join(run_dir, "metrics.csv")) as handle:
        assert all(np.isfinite(float(v)) for row in csv.DictReader(handle) for v in row.values())
    precision = next((item.split("=")[1] for item in extra if item.startswith("train.precision=")), None)
    if precision:  # Trained in 16 bits, saved and evaluated in float32.
        import warnings

        import keras

        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            saved = keras.saving.load_model(os.path.join(run_dir, "model.keras"), safe_mode=True)
        assert not [str(w.message) for w in caught if "optimizer" in str(w.message)]  # Its Adam state came along.
        # 600 digits / 64 = 10 steps; mixed_float16's loss scale skips the steps whose gradients overflow.
        steps = summary["epochs_completed"] * 10
        assert int(saved.optimizer.iterations) == steps if precision == "mixed_bfloat16" else \
            1 <= int(saved.optimizer.iterations) <= steps
        assert saved.decoder.get_layer("logits").compute_dtype == "float32" and summary["precision"] == precision


def test_batch_shards_resolve_and_threads_are_left_alone_once_tensorflow_runs(monkeypatch):
    import tensorflow as tf

    assert machine.resolve_batch_shards(3) == 3
    assert 1 <= machine.resolve_batch_shards(0) <= machine.MAX_AUTO_SHARDS
    monkeypatch.setenv("TF_NUM_INTRAOP_THREADS", "1")  # A sweep worker's share of one core: no shards.
    assert machine.resolve_batch_shards(0) == 1
    assert machine.configure_threads(1) is None
    float(tf.constant(1.0) + 1.0)  # TensorFlow's runtime has started: its thread pools are fixed now.
    before = tf.config.threading.get_intra_op_parallelism_threads()
    note = machine.configure_threads(2)
    assert note and "same results" in note
    assert tf.config.threading.get_intra_op_parallelism_threads() == before


def test_the_command_line_slices_batches_on_a_multicore_cpu(tmp_path):
    result = run_cli("train.py", *quick_sets(str(tmp_path), "train.batch_shards=0", "train.epochs=2"))
    assert result.returncode == 0, result.stderr[-2000:]
    (run_dir,) = run_dirs(str(tmp_path))
    shards = summary_of(run_dir)["batch_shards"]  # 4 on the 2-core CI machine, 1 on a single core or a GPU
    assert ("Each batch runs as" in result.stdout) == (shards > 1)
    assert shards == 1 or f"Each batch runs as {shards} slices" in result.stdout
    assert "thread pools could be split" not in result.stdout  # a fresh process: the split took effect
    for chatter in ("I0000", "oneDNN", "cuInit", "cuda", "absl"):  # TensorFlow's start-up lines stay off the console.
        assert chatter not in result.stderr and chatter not in result.stdout, chatter
    summary = summary_of(run_dir)
    assert summary["status"] == "complete" and summary["epochs_completed"] == 2
    assert math.isfinite(summary["validation"]["neg_elbo_nats"])

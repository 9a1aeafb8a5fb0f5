"""Faults of the evaluation (issue #22): a decoder that ignores the code, the IWAE bound for a large k in bounded
decoder calls, and a metrics.csv far longer than any run writes. Small real models from conftest.build_vae."""

import json
import math

import numpy as np
import pytest
import yaml

import evaluate
from conftest import build_vae
from vae_kl.data import sources
from vae_kl.evaluation import bounds, codes, metrics
from vae_kl.evaluation import verdict as verdicts
from vae_kl.reports import run_figures, run_page
from vae_kl.runs import folders, records
from vae_kl.spec import config


@pytest.fixture(scope="module")
def digits():
    return sources.load_digits(config.DataConfig(source="mnist_embedded"), seed=0)


def informative_encoder(vae):
    """Make a fresh model's code carry information: its posterior standard deviation e^-4 ≈ 0.02, far below how
    much its posterior means differ between digits (the same encoder otherwise)."""
    layer = vae.encoder.get_layer("z_log_var")
    kernel, bias = layer.get_weights()
    layer.set_weights([np.zeros_like(kernel), np.full_like(bias, -8.0)])
    return vae


def zero_decoder_input(vae):
    """The issue's damage: the decoder's first Dense kernel (the only weights that read z) set to zero."""
    first = vae.decoder.layers[1]
    kernel, bias = first.get_weights()
    assert kernel.shape[0] == vae.latent_dim  # It is the layer that reads z.
    first.set_weights([np.zeros_like(kernel), bias])
    return vae


CONTEXT = {"effective_beta": 1.0, "kl_weight": 1.0, "reconstruction_reduction": "sum", "kl_reduction": "sum",
           "num_pixels": 784, "likelihood": "bernoulli", "gaussian_sigma": None, "steps": 20_000}


def bernoulli_log_likelihood(x, logits):
    """log p(x|z) summed over pixels, in numpy float64: x·l - softplus(l)."""
    x, logits = x.reshape(len(x), -1).astype("float64"), logits.reshape(len(logits), -1).astype("float64")
    return np.sum(x * logits - np.logaddexp(0.0, logits), axis=1)


def test_a_model_whose_decoder_ignores_an_informative_code_is_not_called_healthy(digits):
    vae = zero_decoder_input(informative_encoder(build_vae(seed=0)))
    x = digits.x_val[:300]
    validation, _ = metrics.compute_metrics(vae, x, 2)
    assert validation["mutual_information_nats"] > 3 * verdicts.COLLAPSED_BELOW_NATS  # The encoder's code is used...
    # ...the decoder's not: every code decodes to the same image (bit for bit here; rounding allowed for).
    assert abs(validation["decoder_use_nats"]) < 1e-3 and validation["decoder_use_se_nats"] < 1e-3
    verdict = verdicts.diagnose(validation, CONTEXT)
    assert verdict["state"] == "collapsed" and verdict["detected"] is True and verdict["decoder_ignores_code"] is True
    assert verdict["reason"].startswith("the decoder ignores the code"), verdict["reason"]
    assert "Check the decoder's weights" in verdict["advice"] and "Nothing to change" not in verdict["advice"]
    summary = {"collapse": verdict, "validation": validation}
    state, sentence, _ = run_page.verdict_of(summary)
    assert state == "collapsed"
    assert sentence == "COLLAPSED: the code carries information about the digit, but the decoder ignores it."
    json.dumps(validation, allow_nan=False)  # summary.json takes the new keys as they are.


def test_decoder_use_matches_a_plain_loop_over_digits(digits, monkeypatch):
    # The same noise and the same derangement as decoder_use, one digit at a time with the Bernoulli written in
    # numpy; decode batches of 7 make the codes' owners and receivers fall in different calls.
    vae = informative_encoder(build_vae(seed=1))
    x, n, seed = digits.x_val[:20], 20, 5
    z_mean, z_log_var = codes.encode(vae, x)
    monkeypatch.setattr(codes, "DECODE_BATCH", 7)
    use, use_se = bounds.decoder_use(vae, x, z_mean, z_log_var, None, seed)
    rng = np.random.default_rng(seed + 2)
    order = rng.permutation(n)
    donor = {order[i]: order[(i + 1) % n] for i in range(n)}
    z = (z_mean + np.exp(0.5 * z_log_var) * rng.standard_normal(z_mean.shape)).astype("float32")
    logits = vae.decoder(z).numpy()
    gains = [bernoulli_log_likelihood(x[i:i + 1], logits[i:i + 1])[0]
             - bernoulli_log_likelihood(x[i:i + 1], logits[donor[i]:donor[i] + 1])[0] for i in range(n)]
    assert all(donor[i] != i for i in range(n))
    assert use == pytest.approx(np.mean(gains), rel=1e-4, abs=1e-3)
    assert use_se == pytest.approx(np.std(gains, ddof=1) / math.sqrt(n), rel=1e-3, abs=1e-3)
    assert bounds.decoder_use(vae, x[:1], z_mean[:1], z_log_var[:1], None) == (None, None)


def reference_bounds(vae, x, z_mean, z_log_var, k, seed):
    """The IWAE bound and the ELBO's terms by a plain loop: one digit at a time (each gets its (k, 1, J) block
    of noise, as importance_bounds draws it when k > DECODE_BATCH), everything but the decoder in numpy float64,
    under the standard normal prior, log-sum-exp over all k weights at once."""
    rng = np.random.default_rng(seed)
    bounds, reconstructions, kls = [], [], []
    for i in range(len(x)):
        eps = rng.standard_normal((k, 1, z_mean.shape[1])).astype("float32")[:, 0]
        z = (z_mean[i] + np.exp(0.5 * z_log_var[i]) * eps).astype("float32")
        logits = np.concatenate([vae.decoder(z[s:s + 500]).numpy() for s in range(0, k, 500)])
        log_px_z = bernoulli_log_likelihood(np.repeat(x[i:i + 1], k, axis=0), logits)
        z64, mu, log_var = z.astype("float64"), z_mean[i].astype("float64"), z_log_var[i].astype("float64")
        log_pz = np.sum(-0.5 * (z64 ** 2 + math.log(2 * math.pi)), axis=1)
        log_qz = np.sum(-0.5 * ((z64 - mu) ** 2 / np.exp(log_var) + log_var + math.log(2 * math.pi)), axis=1)
        log_w = log_px_z + log_pz - log_qz
        top = log_w.max()
        bounds.append(top + math.log(np.sum(np.exp(log_w - top)) / k))
        reconstructions.append(-log_px_z.mean())
        kls.append(np.mean(log_qz - log_pz))
    return np.array(reconstructions), np.array(bounds), np.array(kls)


def recording_decoder(monkeypatch):
    """Wrap evaluate's decode function; returns the list of batch sizes it is called with."""
    sizes, real = [], codes.decode_logits

    def record(vae, z):
        sizes.append(len(z))
        return real(vae, z)

    monkeypatch.setattr(codes, "decode_logits", record)
    return sizes


@pytest.mark.parametrize("k, n", [(3000, 2), (5, 500)])
def test_the_iwae_bound_decodes_at_most_decode_batch_codes_per_call_and_equals_a_plain_loop(digits, monkeypatch,
                                                                                             k, n):
    vae = build_vae(seed=2)
    assert vae.prior.name_in_config == "standard_normal" and vae.likelihood.name_in_config == "bernoulli"
    x = digits.x_val[:n]
    z_mean, z_log_var = codes.encode(vae, x)
    sizes = recording_decoder(monkeypatch)
    reconstruction, iwae, kl = bounds.importance_bounds(vae, x, z_mean, z_log_var, k, None, seed=11)
    assert max(sizes) <= codes.DECODE_BATCH and sum(sizes) == n * k, sizes[:5]
    if k > codes.DECODE_BATCH:  # 3000 = 1024 + 1024 + 952 per digit.
        assert sizes == [1024, 1024, 952] * n
        ref_reconstruction, ref_iwae, ref_kl = reference_bounds(vae, x, z_mean, z_log_var, k, 11)
        np.testing.assert_allclose(iwae, ref_iwae, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(reconstruction, ref_reconstruction, rtol=1e-5, atol=1e-3)
        np.testing.assert_allclose(kl, ref_kl, rtol=1e-5, atol=1e-4)
    # Either way: the bound is at least the ELBO (Burda et al.'s ordering), digit by digit.
    assert np.all(-iwae <= reconstruction + kl + 1e-6)


def write_rows(path, count):
    with open(path, "w", encoding="utf-8") as handle:
        handle.write("epoch,val_kl,val_reconstruction\n")
        handle.writelines(f"{i + 1},1,2\n" for i in range(count))


def test_a_metrics_csv_longer_than_any_run_is_refused_in_one_line(tmp_path):
    path = str(tmp_path / "metrics.csv")
    write_rows(path, 200_000)  # Twice the rows train.epochs allows, in about 2 MB.
    with pytest.raises(folders.RunFolderError) as refused:
        records.read_csv_rows(path)
    assert "more than 100,000 rows" in str(refused.value) and "\n" not in str(refused.value)
    write_rows(path, 10)
    assert [row["epoch"] for row in records.read_csv_rows(path, max_rows=10)] == list(range(1, 11))
    with pytest.raises(folders.RunFolderError, match="more than 9 rows"):
        records.read_csv_rows(path, max_rows=9)
    with open(path, "r+b") as handle:  # A sparse 65 MiB file: refused by its size before a byte is read.
        handle.truncate(65 * 2 ** 20)
    with pytest.raises(folders.RunFolderError, match="is 65 MiB, more than the 64 MiB"):
        records.read_csv_rows(path)
    assert records.read_csv_rows(str(tmp_path / "absent.csv")) == []


def test_evaluate_refuses_a_run_whose_metrics_csv_has_more_rows_than_any_run(tmp_path, capsys):
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    build_vae(seed=3).save(str(run_dir / "model.keras"))
    (run_dir / "config.yaml").write_text(yaml.safe_dump({"data": {"source": "mnist_embedded", "limit": 600}}))
    (run_dir / "summary.json").write_text(json.dumps({"dataset": "mnist_embedded", "status": "complete"}))
    write_rows(str(run_dir / "metrics.csv"), 200_000)  # Refused as a million rows would be, in 2 MB of disk.
    assert evaluate.main(["--run", str(run_dir)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "metrics.csv has more than 100,000 rows" in err[0]
    assert "Traceback" not in err[0]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert "validation" not in summary  # Refused before anything was computed or written.


def test_the_rate_distortion_path_of_a_long_run_draws_at_most_path_points(tmp_path, monkeypatch):
    from vae_kl.reports import plots

    drawn = {}
    monkeypatch.setattr(plots, "rate_distortion", lambda points, path, title: drawn.update(points=points, title=title))
    history = [{"epoch": i + 1, "val_kl": 1.0, "val_reconstruction": 2.0} for i in range(5000)]
    for name in ("reconstructions", "latent_clusters", "latent_manifold", "kl_per_dimension", "samples"):
        monkeypatch.setattr(plots, name, lambda *args, **kwargs: None)
    vae = build_vae(seed=4)
    x = np.zeros((10, 28, 28, 1), "float32")
    arrays = {"z_mean": np.zeros((10, 2)), "active": np.zeros(2, bool), "kl_per_dim": None,
              "information": np.zeros(2)}
    run_figures.write_figures(vae, str(tmp_path), x, np.arange(10), arrays, history, "t")
    epochs = [point[0] for point in drawn["points"]]
    assert len(epochs) == run_figures.PATH_POINTS and epochs[0] == 1 and epochs[-1] == 5000
    assert epochs == sorted(set(epochs)) and "1000 of the 5000 epochs" in drawn["title"]

"""The figures: new keywords work, digits are dark on light, and the at-a-glance rules hold."""

import matplotlib.pyplot as plt
import numpy as np
import pytest

from vae_kl.reports import plots


def blank(z):
    return np.zeros((len(z), 28, 28, 1), "float32")  # An empty page: must come out white, not black.


def history(beta_one, epochs=6):
    rows = []
    for e in range(1, epochs + 1):
        value = 180 + 300 * np.exp(-3 * e)
        rows.append({"epoch": e, "neg_elbo": value, "val_neg_elbo": value + 1, "reconstruction": value - 5,
                     "val_reconstruction": value - 4, "kl": 5.0, "val_kl": 5.0,
                     "loss": value if beta_one else value / 784,
                     "val_loss": value + 1 if beta_one else (value + 1) / 784})
    return rows


def test_digit_figures_are_dark_on_light(tmp_path):
    plots.samples(blank(np.zeros((16, 2))), tmp_path / "samples.png")
    plots.latent_manifold(blank, tmp_path / "manifold.png", n=4, extent=(-3, 2, -1, 4), title="quantile range")
    for name in ("samples.png", "manifold.png"):
        image = plt.imread(tmp_path / name)[..., :3]
        assert np.median(image) > 0.95, name


def test_loss_curves_drop_the_duplicate_panel_at_beta_one(tmp_path):
    plots.loss_curves(history(True), tmp_path / "one.png")
    plots.loss_curves(history(False), tmp_path / "mean.png", title="β = 784")
    one, mean = plt.imread(tmp_path / "one.png"), plt.imread(tmp_path / "mean.png")
    assert one.shape[1] < 0.85 * mean.shape[1]  # Three panels instead of four.


def test_robust_limits_keep_the_first_epoch_from_setting_the_range():
    fig, ax = plt.subplots()
    epochs = np.arange(1, 7)
    series = [np.array([480.0, 190, 185, 182, 181, 180]), np.array([482.0, 191, 186, 183, 182, 181])]
    note = plots._robust_ylim(ax, epochs, series, 1)
    assert ax.get_ylim()[1] < 200 and "epoch 1 480 / 482" in note
    flat = [np.array([5.1, 5.2, 5.3, 5.4]), np.array([5.1, 5.2, 5.3, 5.4])]  # A steady trend is not an outlier.
    assert plots._robust_ylim(ax, epochs[:4], flat, 1) == ""
    plt.close(fig)


def test_coincident_points_share_one_label():
    fig, ax = plt.subplots()
    xs, ys = np.array([0.0, 0.0, 0.0, 12.0, 3.0]), np.array([205.3, 205.3, 205.3, 165.0, 180.0])
    ax.scatter(xs, ys)
    assert plots._group_close(ax, xs, ys, radius=12) == [[0, 1, 2], [3], [4]]
    label = plots._group_label(["a", "b", "c"])
    assert label.startswith("3 at the same point:") and label.count("\n") == 3
    plt.close(fig)


@pytest.mark.parametrize("collapsed", [None, [False, True, True]])
def test_rate_distortion_with_error_bars_and_seeds(tmp_path, collapsed):
    points = [("a", 3.0, 180.0), ("b", 0.0, 205.0), ("c", 0.0, 205.0)]
    plots.rate_distortion(points, tmp_path / "rd.png", "title", collapsed, xerr=[0.2, 0, 0], yerr=[1.0, 0, 0],
                          seeds=[(2.9, 179.0, False), (0.0, 205.0, True)])
    assert (tmp_path / "rd.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_kl_per_dimension_and_schedule_keywords(tmp_path):
    plots.kl_per_dimension([0.0, 4.4, 0.3], [False, True, True], tmp_path / "kl.png", information=[0.0, 2.0, 0.1],
                           states=["unused", "active", "partial"], title="units")
    plots.kl_schedule(np.arange(11), np.full(11, 0.1), [5, 10], [0.1, 0.1], tmp_path / "constant.png")
    plots.kl_schedule(np.arange(11), np.minimum(1, np.arange(11) / 5), [5, 10], [1, 1], tmp_path / "ramp.png",
                      schedule="linear")
    thumb = plots.thumbnail_png(tmp_path / "kl.png", width=100)
    assert thumb[:8] == b"\x89PNG\r\n\x1a\n"
    with open(tmp_path / "thumb.png", "wb") as handle:
        handle.write(thumb)
    assert plt.imread(tmp_path / "thumb.png").shape[1] <= 100

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


def drawn_texts(fig):
    """(label, bounding box in pixels) of every visible, non-empty text of a drawn figure: titles, the suptitle,
    tick labels and the axes' power-of-ten (offset) texts."""
    fig.canvas.draw()
    renderer = fig.canvas.get_renderer()
    texts = [fig._suptitle] if fig._suptitle is not None else []
    for ax in fig.axes:
        texts += [ax.title, ax.xaxis.get_offset_text(), ax.yaxis.get_offset_text()]
        for axis in (ax.xaxis, ax.yaxis):  # The ticks drawn: those inside the axis's view.
            low, high = sorted(axis.get_view_interval())
            texts += [label for label, at in zip(axis.get_ticklabels(), axis.get_ticklocs()) if low <= at <= high]
    return [(text.get_text(), text.get_window_extent(renderer)) for text in texts
            if text.get_visible() and text.get_text().strip()]


def overlapping(fig):
    found = drawn_texts(fig)
    return [(a, b) for i, (a, box_a) in enumerate(found) for b, box_b in found[i + 1:] if box_a.overlaps(box_b)]


def keep_open(monkeypatch):
    """plots._save without closing: the test reads the figure's drawn texts."""
    figures = []
    monkeypatch.setattr(plots, "_save", lambda fig, path: figures.append(fig))
    return figures


def test_a_collapsed_codes_ticks_do_not_run_together_and_the_title_says_how_near(tmp_path, monkeypatch):
    figures = keep_open(monkeypatch)
    rng = np.random.default_rng(0)
    z = np.stack([-0.003 + 0.0035 * rng.random(1000), 0.003 - 0.0035 * rng.random(1000)], axis=1)  # A collapse.
    plots.latent_clusters(z.astype("float32"), rng.integers(0, 10, 1000), tmp_path / "clusters.png")
    (fig,) = figures
    assert overlapping(fig) == []
    title = fig.axes[0].get_title()
    assert "every mean within 0.003 of the origin" in title and "1,000 digits, one dot" in title
    assert fig.axes[0].get_xlim() == (-3, 3) and fig.axes[0].get_ylim() == (-3, 3)  # The prior's scale, not a zoom.
    assert not any("0.00" in label.get_text() for label in fig.axes[0].get_xticklabels())  # "−2", not "−0.0024".


def test_loss_curves_titles_clear_the_suptitle_and_a_power_of_ten(tmp_path, monkeypatch):
    figures = keep_open(monkeypatch)
    rows = history(False, epochs=10)
    for i, row in enumerate(rows):  # A collapsed run's KL: a few 1e-5 nats, so the axis writes ×10⁻⁵.
        row["kl"], row["val_kl"] = 1e-5 / (i + 1), 0.8e-5 / (i + 1)
    plots.loss_curves(rows, tmp_path / "loss.png", title="Loss per epoch: loss = 1/784·[Σ BCE + 784·KL] "
                                                        "(effective β = 784)")
    (fig,) = figures
    fig.canvas.draw()
    assert any("10" in ax.yaxis.get_offset_text().get_text() for ax in fig.axes)  # The case is drawn.
    assert overlapping(fig) == []


def test_a_constant_kl_weight_is_a_strip_not_a_figure(tmp_path):
    plots.kl_schedule(np.linspace(0, 14070, 2001), np.ones(2001), [469, 938], [1.0, 1.0], tmp_path / "constant.png")
    plots.kl_schedule(np.arange(11), np.minimum(1, np.arange(11) / 5), [5, 10], [1, 1], tmp_path / "ramp.png")
    strip, ramp = plt.imread(tmp_path / "constant.png"), plt.imread(tmp_path / "ramp.png")
    assert strip.shape[0] < ramp.shape[0] / 3

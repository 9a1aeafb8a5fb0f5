"""keras.datasets MNIST, Fashion-MNIST and CIFAR-10: downloaded once, then read from Keras's cache offline.

keras.datasets downloads with urllib and no timeout, so on a network that drops packets it can hang
for minutes. Before a download, one connection attempt with a short timeout; a failure is remembered
in the Keras cache, and no download is tried again from this machine for a while.
"""

import contextlib
import glob
import os
import socket
import time
import urllib.request
from typing import Optional

import numpy as np

from vae_kl.data.arrays import DataError, to_images
from vae_kl.process.exits import first_line

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
CIFAR10_LABELS = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


def keras_datasets_dir() -> str:
    """Where keras.datasets caches its files: $KERAS_HOME/datasets, else ~/.keras/datasets (/tmp/.keras when
    the home folder is read-only), as Keras itself decides."""
    home = os.environ.get("KERAS_HOME")
    if not home:
        base = os.path.expanduser("~")
        home = os.path.join(base if os.access(base, os.W_OK) else "/tmp", ".keras")
    return os.path.join(home, "datasets")


def download_blocked() -> Optional[str]:
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


def remember_download_failure() -> None:
    """Touch the memo download_blocked reads; where the cache cannot be written, nothing is remembered."""
    memo = os.path.join(keras_datasets_dir(), DOWNLOAD_FAILED_MEMO)
    try:
        os.makedirs(os.path.dirname(memo), exist_ok=True)
        with open(memo, "w") as file:
            file.write(f"{time.strftime('%Y-%m-%dT%H:%M:%S')} keras.datasets download failed\n")
    except OSError:
        pass


def refusal(name: str, reason: str) -> DataError:
    """The one-line DataError of a keras.datasets source that cannot be loaded."""
    return DataError(f"Could not load {name} from keras.datasets ({reason}). "
                     f"Without internet, use data.source: mnist_embedded.")


def needs_download(name: str) -> bool:
    return not glob.glob(os.path.join(keras_datasets_dir(), KERAS_CACHE_GLOBS[name]))


def check_download(name: str) -> None:
    """Before TensorFlow: refuse a keras.datasets source that is not cached and cannot be downloaded now
    (download_blocked: a remembered failure, or the host silent for DOWNLOAD_PROBE_SECONDS)."""
    blocked = download_blocked() if needs_download(name) else None
    if blocked:
        raise refusal(name, blocked)


def load_keras_dataset(name: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """keras.datasets MNIST, Fashion-MNIST or CIFAR-10; downloads once, then reads the cache offline. A download
    fails, and is remembered, once a socket waits DOWNLOAD_STALL_SECONDS for anything (a stalled proxy or host)."""
    import keras

    downloading = needs_download(name)
    if downloading:
        check_download(name)
    module = {"mnist": keras.datasets.mnist, "fashion_mnist": keras.datasets.fashion_mnist,
              "cifar10": keras.datasets.cifar10}[name]
    try:
        with _socket_timeout(DOWNLOAD_STALL_SECONDS) if downloading else contextlib.nullcontext():
            (x_train, y_train), (x_test, y_test) = module.load_data()
    except Exception as error:
        if downloading:
            remember_download_failure()
        raise refusal(name, _download_failure(error))
    # CIFAR-10's labels are (N, 1); MNIST's (N,).
    return ((to_images(x_train, name), y_train.reshape(-1).astype("int64")),
            (to_images(x_test, name), y_test.reshape(-1).astype("int64")))


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
        return first_line(error)
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

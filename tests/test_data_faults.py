"""Hostile inputs to data.py (issue #22), each refused with one `error:` line and exit status 2, before anything
large is allocated or decoded: zip bombs and forged .npy headers, files that are not .npz at all, pixels of no
known scale, huge PNGs, a stalled HTTPS proxy, FIFOs in a folder of images. The hostile files are small on disk."""

import os
import re
import socket
import struct
import threading
import warnings
import zipfile
import zlib

import numpy as np
import pytest
from PIL import Image, ImageFile

from vae_kl.data import arrays, downloads, files, sources
from vae_kl.process import exits
from vae_kl.spec import config

BOUND_SECONDS = 120  # Generous: every refusal here takes about a second; only a hang comes near this.


def ends(action, bound=BOUND_SECONDS):
    """The exception action() raised (None if it returned), run in a daemon thread so that a hang fails the test
    after `bound` seconds instead of hanging the suite."""
    outcome = {}

    def target():
        try:
            action()
            outcome["error"] = None
        except BaseException as error:  # Handed to the test, which checks what it is.
            outcome["error"] = error

    thread = threading.Thread(target=target, daemon=True)
    thread.start()
    thread.join(bound)
    assert not thread.is_alive(), f"still running after {bound} s"
    return outcome["error"]


def refused(action, capsys):
    """The one line exits.guard prints for action(), checked to be an `error:` line with exit status 2 and to
    come with no warning (Pillow's DecompressionBombWarning among them)."""
    capsys.readouterr()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        status = exits.guard(action)
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert status == 2 and len(lines) == 1 and lines[0].startswith("error: "), err
    assert not caught, [str(warning.message) for warning in caught]
    return lines[0]


def npz_config(path):
    return config.from_dict({"data": {"source": "npz", "path": str(path)}}).data


def four_arrays(x_train, x_test=None):
    x_test = np.zeros((2, *x_train.shape[1:]), x_train.dtype) if x_test is None else x_test
    return {"x_train": x_train, "y_train": np.zeros(len(x_train), "int64"), "x_test": x_test,
            "y_test": np.zeros(len(x_test), "int64")}


def headers_only_npz(path, x_train_shape, dtype="float32"):
    """A .npz whose members are .npy headers and no data: x_train claims x_train_shape, so the file is a few
    hundred bytes whatever it claims, and reading any array from it would fail (nothing may try)."""
    count = max(x_train_shape[0], 1)
    shapes = {"x_train": (x_train_shape, dtype), "y_train": ((count,), "int64"), "x_test": ((2, 28, 28), "uint8"),
              "y_test": ((2,), "int64")}
    with zipfile.ZipFile(path, "w") as archive:
        for key, (shape, kind) in shapes.items():
            with archive.open(f"{key}.npy", "w") as member:
                np.lib.format.write_array_header_1_0(member, {"shape": shape, "fortran_order": False,
                                                              "descr": np.lib.format.dtype_to_descr(np.dtype(kind))})
    return path


def forbid_reading_arrays(monkeypatch):
    def read_array(*args, **kwargs):
        raise AssertionError("an array was read although its header should have refused it")

    monkeypatch.setattr(np.lib.format, "read_array", read_array)


@pytest.mark.parametrize("case, fragment", [
    ("zip_bomb", r"would need 18\.0 MiB of memory to load \(its arrays as stored plus the images as float32\), "
                 r"more than the 1\.0 MiB cap \(data\.MAX_DATA_BYTES\)"),
    ("claims_terabytes", r"\(\d+ bytes on disk: x_train 1000000000×28×28 float32, .*\) would need 5\.7 TiB of "
                         r"memory to load .* more than the [\d.]+ GiB cap"),
    ("negative_size", r"x_train has shape \(-3, 28, 28\), but every dimension must be at least 1"),
    ("zero_size", r"x_train has shape \(0, 28, 28\), but every dimension must be at least 1"),
    ("absurd_side", r"x_train images are 100000×100000 \(H×W\), but H and W must be from 4 to 4096"),
])
def test_an_npz_is_bounded_by_its_headers_before_any_array_is_read(tmp_path, monkeypatch, capsys, case, fragment):
    path = tmp_path / "hostile.npz"
    if case == "zip_bomb":  # 12.5 MB of float64 zeros compress to about 13 KB.
        np.savez_compressed(path, **four_arrays(np.zeros((2000, 28, 28)), np.zeros((10, 28, 28))))
        assert os.path.getsize(path) < 20_000
        monkeypatch.setattr(arrays, "MAX_DATA_BYTES", 2**20)
    else:
        shape = {"claims_terabytes": (10**9, 28, 28), "negative_size": (-3, 28, 28), "zero_size": (0, 28, 28),
                 "absurd_side": (3, 100_000, 100_000)}[case]
        headers_only_npz(path, shape, "uint8" if case == "absurd_side" else "float32")
    forbid_reading_arrays(monkeypatch)
    for action in (lambda: files.load_npz(str(path)), lambda: sources.peek(npz_config(path))):  # Training, --explain.
        line = refused(action, capsys)
        assert re.search(fragment, line) and "hostile.npz" in line, line


def test_the_memory_cap_is_exact_and_half_the_machine_where_that_is_less(tmp_path, monkeypatch):
    path = tmp_path / "digits.npz"
    np.savez_compressed(path, **four_arrays(np.zeros((200, 28, 28), "uint8")))
    need = (200 + 2) * 784 * (1 + 4) + (200 + 2) * 8  # uint8 as stored plus float32; int64 labels.
    monkeypatch.setattr(arrays, "MAX_DATA_BYTES", need)
    (x_train, _), _ = files.load_npz(str(path))  # Exactly at the cap: loaded.
    assert x_train.shape == (200, 28, 28, 1)
    monkeypatch.setattr(arrays, "MAX_DATA_BYTES", need - 1)
    with pytest.raises(arrays.DataError, match=r"would need 774\.9 KiB of memory .* more than the 774\.9 KiB cap"):
        files.load_npz(str(path))
    monkeypatch.setattr(arrays, "MAX_DATA_BYTES", 8 * 2**30)
    monkeypatch.setattr(arrays, "_machine_memory", lambda: 4 * 2**30)
    assert arrays.memory_cap() == (2 * 2**30, "half of this machine's 4.0 GiB of memory")
    monkeypatch.setattr(arrays, "_machine_memory", lambda: None)
    assert arrays.memory_cap() == (8 * 2**30, "data.MAX_DATA_BYTES")


@pytest.mark.parametrize("content, fragment", [
    (b"x_train,y_train\n1,2\n", r"is not a readable \.npz file: it is not a zip archive \(it starts with "
                                r"b'x_train,y_train\\n1,2\\n'\); a \.npz is the zip archive of \.npy arrays"),
    (b"version https://git-lfs.github.com/spec/v1\noid sha256:0\n", r"not a zip archive .*, a Git LFS pointer: "
                                                                    r"run git lfs pull"),
    (b"", r"is not a readable \.npz file: it is empty"),
    ("npy", r"is a single \.npy array, not a \.npz file \(a zip archive of \.npy arrays\)"),
])
def test_a_file_that_is_not_a_zip_is_called_that_not_pickled(tmp_path, capsys, content, fragment):
    path = tmp_path / "data.npz"
    if content == "npy":
        with open(path, "wb") as file:
            np.save(file, np.zeros((4, 28, 28)))
    else:
        path.write_bytes(content)
    for action in (lambda: files.load_npz(str(path)), lambda: sources.peek(npz_config(path))):
        line = refused(action, capsys)
        assert re.search(fragment, line) and "pickled" not in line, line


def pixels(*values, dtype="float64"):
    x = np.zeros((2, 4, 4), dtype)
    x.flat[:len(values)] = values
    return x


@pytest.mark.parametrize("x, scale", [
    (pixels(0.5, 1.0, dtype="float32"), 1),  # Max exactly 1: [0, 1] as it is.
    (pixels(0, 1, dtype="uint8"), 1),  # A binary image: [0, 1] too.
    (pixels(128, 255, dtype="uint8"), 255),
    (pixels(2.0, 255.0), 255),  # Whole-valued floats up to 255: 8-bit levels.
    (pixels(1, 2, dtype="int64"), 255),  # Whole numbers above 1 are levels, however dark.
])
def test_pixels_in_0_1_or_whole_0_255_are_read_at_their_scale(x, scale):
    images = arrays.to_images(x, "x_train")
    assert images.dtype == np.float32 and images.shape == (2, 4, 4, 1)
    np.testing.assert_allclose(images[..., 0], x.astype("float64") / scale, rtol=1e-6)


@pytest.mark.parametrize("x, found", [
    (np.linspace(0, 1.5, 32).reshape(2, 4, 4), "from 0 to 1.5, above 1 but not whole numbers"),
    (pixels(np.nextafter(np.float32(1), np.float32(2)), dtype="float32"), "from 0 to 1.0000001, above 1 but not"),
    (pixels(254.5), "from 0 to 254.5, above 1 but not whole numbers"),
    (pixels(255.5), "from 0 to 255.5; rescale"),
    (pixels(256, dtype="int64"), "from 0 to 256; rescale"),
    (pixels(-1, 255), "from -1 to 255; rescale"),
])
def test_pixels_of_no_known_scale_are_refused_saying_what_was_found(x, found):
    with pytest.raises(arrays.DataError) as caught:
        arrays.to_images(x, "x_train")
    message = str(caught.value)
    assert "pixels must lie in [0, 1] or [0, 255] (whole numbers there, read as 8-bit levels)" in message
    assert f"received values {found}" in message, message


def test_an_npz_of_pixels_up_to_1_5_is_refused_not_divided_by_255(tmp_path, capsys):
    path = tmp_path / "scaled.npz"
    np.savez(path, **four_arrays(np.linspace(0, 1.5, 4 * 28 * 28).reshape(4, 28, 28)))
    line = refused(lambda: files.load_npz(str(path)), capsys)
    assert "scaled.npz' x_train pixels must lie in [0, 1] or [0, 255]" in line
    assert "received values from 0 to 1.5, above 1 but not whole numbers" in line


def png(path, width, height, whole=True):
    """A greyscale PNG of zeros, written a row at a time so its pixels are never held: a 12,000×12,000 one is
    about 140 KB. whole=False writes one row of pixel data only, enough for Image.open (which reads headers)."""
    def chunk(kind, body):
        return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))

    compressor, row = zlib.compressobj(9), bytes(width + 1)  # Each row: filter type 0, then zeros.
    pixels = b"".join(compressor.compress(row) for _ in range(height if whole else 1)) + compressor.flush()
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "wb") as file:
        file.write(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0))
                   + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))


@pytest.fixture(scope="module")
def huge_png(tmp_path_factory):
    path = str(tmp_path_factory.mktemp("png") / "huge.png")
    png(path, 12_000, 12_000)  # 144 million pixels: over Pillow's warning limit, under its error limit.
    assert os.path.getsize(path) < 1_000_000
    return path


@pytest.mark.parametrize("case", ["huge", "bomb", "mismatch"])
@pytest.mark.parametrize("how", ["load", "peek"])
def test_huge_images_are_refused_from_their_header_without_decoding_or_warnings(tmp_path, monkeypatch, capsys,
                                                                                 huge_png, case, how):
    root = tmp_path / "images"
    if case == "mismatch":  # A normal first image, then the huge one.
        os.makedirs(root / "a")
        Image.fromarray(np.zeros((16, 16), "uint8")).save(root / "a" / "0.png")
    if case == "bomb":  # 400 million pixels: Pillow refuses to open it at all.
        png(str(root / "a" / "1.png"), 20_000, 20_000, whole=False)
    else:
        os.makedirs(root / "a", exist_ok=True)
        os.link(huge_png, root / "a" / "1.png")
    decoded = []
    original_load = ImageFile.ImageFile.load

    def load(image):
        decoded.append(image.size)
        return original_load(image)

    monkeypatch.setattr(ImageFile.ImageFile, "load", load)
    cfg = config.from_dict({"data": {"source": "folder", "path": str(root)}}).data
    action = (lambda: files.load_folder(str(root), seed=0)) if how == "load" else (lambda: sources.peek(cfg))
    line = refused(action, capsys)
    expected = {"huge": "1.png' is 12000×12000 (H×W), but H and W must be from 4 to 4096",
                "bomb": f"1.png' has over {2 * Image.MAX_IMAGE_PIXELS:,} pixels; data.source folder takes images up "
                        f"to 4096×4096",
                "mismatch": "1.png' is 12000×12000 (H×W) but"}[case]
    assert expected in line, line
    assert all(max(size) <= 16 for size in decoded), decoded  # At most the 16×16 first image was decoded.


def test_a_stalled_https_proxy_fails_within_the_stall_timeout_and_names_its_variable(tmp_path, monkeypatch):
    import keras  # noqa: F401  Imported here so that its import time is not inside the bound below.

    server = socket.socket()  # Listens (the kernel completes each connection) and never accepts nor answers.
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    proxy, timeout_before = f"http://127.0.0.1:{server.getsockname()[1]}", socket.getdefaulttimeout()
    try:
        for variable in ("HTTPS_PROXY", "https_proxy"):
            for name in ("https_proxy", "HTTPS_PROXY", "no_proxy", "NO_PROXY", "all_proxy", "ALL_PROXY"):
                monkeypatch.delenv(name, raising=False)
            monkeypatch.setenv(variable, proxy)
            home = tmp_path / variable
            monkeypatch.setenv("KERAS_HOME", str(home))  # No cache: a download is tried, through the proxy.
            monkeypatch.setattr(downloads, "DOWNLOAD_STALL_SECONDS", 1.0)
            error = ends(lambda: downloads.load_keras_dataset("cifar10"))
            assert isinstance(error, arrays.DataError), repr(error)
            assert (f"Could not load cifar10 from keras.datasets (the HTTPS proxy in {variable} ({proxy}) gave no "
                    f"answer for 1 s and the download was stopped; check that proxy, or unset {variable}") in str(error)
            assert "\n" not in str(error) and socket.getdefaulttimeout() == timeout_before  # Restored.
            assert (home / "datasets" / downloads.DOWNLOAD_FAILED_MEMO).exists()  # The next run is refused at once.
    finally:
        server.close()


@pytest.mark.parametrize("where", ["top", "label"])
def test_a_fifo_in_a_folder_of_images_is_refused_from_the_listing(tmp_path, monkeypatch, where):
    root = tmp_path / "images"
    os.makedirs(root / "a")
    for i in range(2):
        Image.fromarray(np.zeros((16, 16), "uint8")).save(root / "a" / f"{i}.png")
    fifo = root / ("pipe.png" if where == "top" else "a/pipe.png")
    os.mkfifo(fifo)

    def no_open(file):
        raise AssertionError(f"{file} was opened: the listing should have refused the FIFO first")

    monkeypatch.setattr(files, "_open_image", no_open)
    try:
        error = ends(lambda: files.load_folder(str(root), seed=0))
    finally:  # Should a reader be stuck on the FIFO, a writer lets it go.
        try:
            os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
        except OSError:  # ENXIO: nobody is reading it, as it should be.
            pass
    assert isinstance(error, arrays.DataError), repr(error)
    assert str(error) == (f"The image '{fifo}' is not a regular file (a pipe or a device); point it at a regular "
                          f"file.")

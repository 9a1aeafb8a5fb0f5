"""Your own images: a .npz in the keras.datasets layout, or a folder of PNG/JPEG files (one sub-folder per
label). Every header is read and checked before a pixel is decompressed or decoded.
"""

import math
import os
import warnings
import zipfile
import zlib

import numpy as np

from vae_kl.data.arrays import (
    MAX_IMAGE_SIDE,
    DataError,
    bytes_text,
    check_image_size,
    check_memory,
    check_numbers,
    image_layout,
    regular_file,
    shape_text,
    to_images,
    to_labels,
)
from vae_kl.process.exits import first_line

NPZ_KEYS = ("x_train", "y_train", "x_test", "y_test")
FOLDER_VALIDATION_FRACTION = 0.1  # A folder has no test split: hold out 10 % of each label (at least 1).
FOLDER_FORMATS = ("PNG", "JPEG")  # What PIL must recognise a file as.
FOLDER_TOP_LABEL = "."  # The label name of images lying directly in data.path.
# What reading a .npz member can raise on a damaged file: truncated data, a bad CRC or deflate stream, an
# encrypted member, a compression method zipfile lacks.
_NPZ_READ_ERRORS = (ValueError, OSError, EOFError, RuntimeError, NotImplementedError, zipfile.BadZipFile,
                    zlib.error)


def load_npz(path: str) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray]]:
    """Read (x_train, y_train), (x_test, y_test) from a .npz file. Every .npy header is checked first (_check_npz:
    shapes, dtypes, no pickled objects, the memory it expands to), then the arrays are read from the same open file."""
    with _open_npz(path) as archive:
        _check_npz(archive, path)
        arrays = {key: _read_npz_member(archive, key, path) for key in NPZ_KEYS}
    x_train = to_images(arrays.pop("x_train"), f"'{path}' x_train")  # pop: free each original once converted.
    x_test = to_images(arrays.pop("x_test"), f"'{path}' x_test")
    y_train = to_labels(arrays["y_train"], len(x_train), f"'{path}' y_train")
    y_test = to_labels(arrays["y_test"], len(x_test), f"'{path}' y_test")
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
        raise DataError(f"'{path}' is not a readable .npz file: {type(error).__name__}: {first_line(error)}.")


def _file_start(path, size=24):
    try:
        with open(path, "rb") as file:
            return file.read(size)
    except OSError:
        return b""


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
                        f"({type(error).__name__}: {first_line(error)}).")
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
        check_numbers(members[key][1], f"'{path}' {key}")
        layouts[key] = image_layout(members[key][0], f"'{path}' {key}")
    train, test = layouts["x_train"][1:], layouts["x_test"][1:]
    if train != test:
        raise DataError(f"'{path}' x_train images are {shape_text(train)} but x_test images are "
                        f"{shape_text(test)}; both splits must share one H×W×C.")
    for key, count in (("y_train", layouts["x_train"][0]), ("y_test", layouts["x_test"][0])):
        shape, dtype = members[key]
        if shape != (count,) or not np.issubdtype(dtype, np.integer):
            raise DataError(f"'{path}' {key} must be {count} integer labels of shape ({count},); "
                            f"received dtype {dtype}, shape {shape}.")
    # Reading holds each array as stored, then the images' float32 copy (what training keeps).
    need = sum(math.prod(shape) * dtype.itemsize for shape, dtype in members.values()) + \
        4 * sum(math.prod(layout) for layout in layouts.values())
    shapes = ", ".join(f"{key} {shape_text(members[key][0])} {members[key][1]}" for key in ("x_train", "x_test"))
    check_memory(need, f"'{path}' ({bytes_text(os.path.getsize(path))} on disk: {shapes})",
                 "its arrays as stored plus the images as float32")
    return layouts


def _read_npz_member(archive, key, path):
    try:
        with archive.open(f"{key}.npy") as member:
            return np.lib.format.read_array(member, allow_pickle=False)
    except _NPZ_READ_ERRORS as error:  # Truncated data, a bad CRC, a broken deflate stream.
        raise DataError(f"'{path}' is not a readable .npz file: its {key} is damaged ({type(error).__name__}: "
                        f"{first_line(error)}); save it again.")


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
        raise DataError(f"'{file}' cannot be read as an image ({type(error).__name__}: {first_line(error)}); "
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
        raise DataError(f"'{file}' is {shape_text(shape[:2])} (H×W) but '{first[0]}' is "
                        f"{shape_text(first[1][:2])}; all images must share one size (they are not "
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
            raise DataError(f"'{file}' cannot be read as an image ({type(error).__name__}: {first_line(error)}); "
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
    check_memory(count * math.prod(shape) * 6, f"data.path '{path}' ({count} images of {shape_text(shape)})",
                 "decoded, stacked, and as float32")
    return file, shape


def load_folder(path: str, seed: int) -> tuple[tuple[np.ndarray, np.ndarray], tuple[np.ndarray, np.ndarray], list[str]]:
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
    x, y = to_images(np.stack(images), f"data.path '{path}'"), np.asarray(labels, "int64")  # (N, H, W, C)
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


def label_text(names: list[str], shown: int = 10) -> str:
    pairs = [f"{i} = {name}" for i, name in enumerate(names[:shown])]
    return ", ".join(pairs) + (f", ... and {len(names) - shown} more" if len(names) > shown else "")


def peek_npz(path: str) -> tuple[tuple[int, int, int], int, int]:
    """((H, W, C), training count, test count) of a .npz from its headers, checked as load_npz checks them."""
    with _open_npz(path) as archive:
        layouts = _check_npz(archive, path)
    return layouts["x_train"][1:], layouts["x_train"][0], layouts["x_test"][0]


def peek_folder(path: str) -> tuple[tuple[int, int, int], int, int]:
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

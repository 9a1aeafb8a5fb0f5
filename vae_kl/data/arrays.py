"""What an image array must be, checked before training: shapes, pixel scales, sizes, memory, labels.

Every source turns its images into float32 arrays (N, H, W, C) in [0, 1] here (`to_images`). H and W
must be divisible by 4 (the encoder's two stride-2 convolutions) and at most MAX_IMAGE_SIDE; C is 1
(greyscale) or 3 (RGB); pixels are [0, 1] or whole numbers in [0, 255]. What a file would allocate is
bounded (memory_cap) before anything is decompressed or decoded.
"""

import os
import stat

import numpy as np

from vae_kl.process import exits

CHANNELS = (1, 3)  # Greyscale or RGB: what the decoder's last layer and the figures handle.
SIZE_MULTIPLE = 4  # The encoder halves H and W twice (two stride-2 convolutions) and the decoder doubles back.
# What loading may allocate, checked from the file headers (.npy headers in a .npz, image headers in a folder)
# before anything is decompressed or decoded, so a few-KB zip bomb or a 12,000×12,000 PNG is refused at once.
MAX_IMAGE_SIDE = 4096  # Largest H or W: the encoder's Dense layer has 64·H·W weights, a billion at 4096×4096.
# The most memory loading one data set may take (its arrays as read plus their float32 copy): 8 GiB is 11× CIFAR-10
# as float32. Half this machine's memory (or its cgroup limit) lowers it: past that, Linux's OOM killer, not a
# MemoryError, would end the run.
MAX_DATA_BYTES = 8 * 2**30


class DataError(exits.UserError):
    """The requested data cannot be loaded; the message says what was expected."""


def to_images(x: np.ndarray, where: str) -> np.ndarray:
    """Accept (N, H, W), (N, H, W, C) with C in {1, 3}, or (N, 784) for 28×28, with pixels in [0, 1] or whole
    numbers in [0, 255]; returns float32 (N, H, W, C) in [0, 1]. H and W must be multiples of SIZE_MULTIPLE."""
    x = np.asarray(x)
    check_numbers(x.dtype, where)
    whole = np.issubdtype(x.dtype, np.integer)
    x = x.reshape(image_layout(x.shape, where)).astype("float32")  # A copy: divided in place below.
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


def check_numbers(dtype: np.dtype, where: str) -> None:
    if not np.issubdtype(dtype, np.number) or np.issubdtype(dtype, np.complexfloating):
        raise DataError(f"{where} must hold numbers, received dtype {dtype}.")


def image_layout(shape: tuple[int, ...], where: str) -> tuple[int, int, int, int]:
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


def check_image_size(height: int, width: int, where: str, subject: str = "images are") -> None:
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


def bytes_text(count: int) -> str:
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


def memory_cap() -> tuple[int, str]:
    """(bytes, why) of the most memory loading a data set may take: MAX_DATA_BYTES, or half this machine's
    memory where that is less."""
    total = _machine_memory()
    if total is not None and total // 2 < MAX_DATA_BYTES:
        return total // 2, f"half of this machine's {bytes_text(total)} of memory"
    return MAX_DATA_BYTES, "data.MAX_DATA_BYTES"


def check_memory(need: int, what: str, counted: str) -> None:
    """Refuse data that would need more than memory_cap() bytes to load; `what` names it, `counted` says how
    `need` was counted."""
    cap, why = memory_cap()
    if need > cap:
        raise DataError(f"{what} would need {bytes_text(need)} of memory to load ({counted}), more than the "
                        f"{bytes_text(cap)} cap ({why}); keep fewer or smaller images in it.")


def to_labels(y: np.ndarray, count: int, where: str) -> np.ndarray:
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != count or not np.issubdtype(y.dtype, np.integer):
        raise DataError(f"{where} must be {count} integer labels of shape ({count},); "
                        f"received dtype {y.dtype}, shape {y.shape}.")
    return y.astype("int64")



def shape_text(shape: tuple[int, ...]) -> str:
    return "×".join(str(int(s)) for s in shape)


def regular_file(path: str, what: str) -> None:
    """Refuse a path that is not a regular file before anything opens it: a FIFO or a device would block the
    open forever, a folder fails obscurely."""
    try:
        mode = os.stat(path).st_mode
    except OSError as error:
        raise DataError(f"{what} '{path}' cannot be read ({error.strerror}); point it at an existing file.")
    if not stat.S_ISREG(mode):
        kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file (a pipe or a device)"
        raise DataError(f"{what} '{path}' is {kind}; point it at a regular file.")

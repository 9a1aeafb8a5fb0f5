"""Drop-in replacements for Keras layers that compute the same function faster on a CPU.

Each class subclasses the Keras layer it replaces and overrides only `call`, so it
has the same constructor, config and weights (names, shapes, order, initialisers):
`set_weights(plain.get_weights())` moves a model between the two. Only the
arithmetic is reorganised; outputs and gradients agree within float32 rounding.
(A .keras or .weights.h5 file addresses weights by layer class, so a file saved
with one kind of layer loads only into a model built with the same kind.)

Why this layer and not others (measured in docs/performance.md): oneDNN runs the
other convolutions at 160-195 GFLOP/s, and every rewrite of them in TensorFlow ops
(sub-pixel convolution + depth-to-space, per-phase convolutions, im2col + matmul)
was slower, because TensorFlow's slicing and reshuffling ops move data at a few GB/s.
The stride-1 transposed convolution down to one channel is the exception: oneDNN
vectorises it over output channels, of which it has one, and runs it at 20-30 GFLOP/s.
"""

from typing import Optional, Union

import keras
import numpy as np
import tensorflow as tf
from keras import layers


def column_mask(dj: int, height: int, width: int, dtype: Union[str, tf.DType] = "float32") -> Optional[tf.Tensor]:
    """(H·W,) mask of the flattened image, of dtype: 1 where column c + dj lies inside it; None if dj = 0."""
    if dj == 0:
        return None
    columns = np.arange(height * width) % width
    return tf.constant(((columns + dj >= 0) & (columns + dj < width)).astype("float32"), dtype=dtype)


def tap_conv_transpose(x: tf.Tensor, kernel: tf.Tensor) -> tf.Tensor:
    """tf.nn.conv2d_transpose(x, kernel, strides=1, padding="SAME") for an odd-sized kernel, computed faster.

    x: (batch, H, W, in); kernel: (kh, kw, out, in) as Keras stores it. Returns (batch, H, W, out).

    A transposed convolution is a correlation with the spatially flipped kernel F:
        y[m, n, o] = Σ_{i, j, c} x[m + di, n + dj, c] · F[i, j, o, c],  di = i - kh // 2, dj = j - kw // 2,
    with x zero outside the image. Forward: one matrix product gives every tap's plane
    u[(i, j, o), pixel] = Σ_c F[i, j, o, c]·x[pixel, c], tap-major so each plane is a contiguous run
    of flattened images; y is the sum of the planes, each read at pixel + di·W + dj. On flattened
    images that read is a contiguous window of the zero-padded planes: a shift by whole rows runs
    into the padding, and a shift by dj columns, which would wrap into the neighbouring row, is
    masked to zero in the columns it leaves the image. Backward: the same windows of dy (shifted
    the other way) give each tap's plane gradient, and two more matrix products give dx and dF.
    With one output channel this beats oneDNN's convolutions forward and, on batch slices run on one
    thread each as train.py runs them on a CPU, backward too (docs/performance.md, row 37).
    """
    kh, kw, out_channels, in_channels = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"tap_conv_transpose needs an odd kernel size, received {kh}x{kw}.")
    ph, pw = kh // 2, kw // 2
    height, width = x.shape[1], x.shape[2]
    if height is None or width is None:
        raise ValueError("tap_conv_transpose needs the image height and width when the model is built; "
                         f"received input shape {tuple(x.shape)}. Give keras.Input a full image shape.")
    size, pad = height * width, ph * width + pw  # The padding covers the farthest read.
    taps = [(i, j) for i in range(kh) for j in range(kw)]

    @tf.custom_gradient
    def conv_transpose(x, kernel):
        flipped = tf.reverse(kernel, axis=[0, 1])  # (kh, kw, out, in)
        weights = tf.reshape(tf.transpose(flipped, (3, 0, 1, 2)), (in_channels, kh * kw * out_channels))
        pixels = tf.reshape(x, (-1, in_channels))  # (batch·H·W, in)
        planes = tf.matmul(weights, pixels, transpose_a=True, transpose_b=True)  # (kh·kw·out, batch·H·W)
        planes = tf.reshape(planes, (kh, kw, out_channels, -1, size))  # Each tap's plane is contiguous.
        padded = tf.pad(planes, [[0, 0]] * 4 + [[pad, pad]])
        terms = []  # One per column offset, so each mask is applied once.
        for j in range(kw):
            starts = [pad + (i - ph) * width + j - pw for i in range(kh)]  # Reading pixel + di·W + dj.
            term = tf.add_n([padded[i, j, :, :, s:s + size] for i, s in enumerate(starts)])  # (out, batch, H·W)
            mask = column_mask(j - pw, height, width, x.dtype)
            terms.append(term if mask is None else term * mask)
        y = tf.reshape(tf.add_n(terms), (out_channels, -1, height, width))
        y = tf.transpose(y, (1, 2, 3, 0))  # (batch, H, W, out)

        def grad(dy):
            rows = tf.reshape(tf.transpose(dy, (3, 0, 1, 2)), (out_channels, -1, size))  # (out, batch, H·W)
            padded_dy = tf.pad(rows, [[0, 0], [0, 0], [pad, pad]])
            shifted = []  # dy read at pixel - (di·W + dj): each tap plane's gradient.
            for i, j in taps:
                start = pad - (i - ph) * width - (j - pw)
                plane = padded_dy[:, :, start:start + size]
                mask = column_mask(pw - j, height, width, x.dtype)
                shifted.append(plane if mask is None else plane * mask)
            dplanes = tf.reshape(tf.stack(shifted), (kh * kw * out_channels, -1))  # (kh·kw·out, batch·H·W)
            dx = tf.matmul(dplanes, weights, transpose_a=True, transpose_b=True)  # (batch·H·W, in)
            dweights = tf.matmul(dplanes, pixels)  # (kh·kw·out, in), the gradient of weights transposed.
            dkernel = tf.reverse(tf.reshape(dweights, (kh, kw, out_channels, in_channels)), axis=[0, 1])
            return tf.reshape(dx, tf.shape(x)), dkernel

        return y, grad

    return conv_transpose(x, kernel)


@keras.saving.register_keras_serializable(package="vae_kl")
class TapMatmulConv2DTranspose(layers.Conv2DTranspose):
    """Conv2DTranspose restricted to strides=1, padding='same', an odd kernel, computed by tap_conv_transpose.

    Meant for few output channels (the decoder's last layer has one): the forward matmul has
    kh·kw·out columns, so with many output channels the plain layer is the better choice.
    """

    def __init__(self, filters, kernel_size, strides=1, padding="same", **kwargs):
        super().__init__(filters, kernel_size, strides=strides, padding=padding, **kwargs)
        if tuple(self.strides) != (1, 1) or self.padding != "same" or tuple(self.dilation_rate) != (1, 1):
            raise ValueError("TapMatmulConv2DTranspose supports only strides=1, padding='same', dilation_rate=1; "
                             f"received strides={self.strides}, padding={self.padding!r}, "
                             f"dilation_rate={self.dilation_rate}.")
        if self.data_format != "channels_last" or any(k % 2 == 0 for k in self.kernel_size):
            raise ValueError("TapMatmulConv2DTranspose needs channels_last data and an odd kernel size; "
                             f"received data_format={self.data_format!r}, kernel_size={self.kernel_size}.")

    def call(self, inputs):
        # A tensor, not the variable: tf.custom_gradient then routes the kernel gradient through grad().
        outputs = tap_conv_transpose(inputs, tf.convert_to_tensor(self.kernel))
        if self.use_bias:
            outputs = outputs + self.bias
        if self.activation is not None:
            outputs = self.activation(outputs)
        return outputs

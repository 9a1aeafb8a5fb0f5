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

import keras
import tensorflow as tf
from keras import layers


def tap_conv_transpose(x, kernel):
    """tf.nn.conv2d_transpose(x, kernel, strides=1, padding="SAME") for an odd-sized kernel, computed faster.

    x: (batch, H, W, in); kernel: (kh, kw, out, in) as Keras stores it. Returns (batch, H, W, out).

    A transposed convolution is a correlation with the spatially flipped kernel F:
        y[m, n, o] = Σ_{i, j, c} x[m + i - ph, n + j - pw, c] · F[i, j, o, c],  ph = (kh - 1) / 2.
    Forward: one matrix product gives every tap's plane u[(i, j, o), pixel] = Σ_c F[i, j, o, c]·x[pixel, c],
    laid out tap-major so that each plane is contiguous; y is then the sum of the kh·kw planes, each
    shifted by (i - ph, j - pw), i.e. sliced out of the zero-padded planes. With one output channel this
    forward is about 3x faster than oneDNN's transposed convolution. Backward: the gradients are the
    ordinary convolution ops (a Conv2D with `in` output channels and a filter gradient), which oneDNN
    already runs fast; autodiff of the slices would not be.
    """
    kh, kw, out_channels, in_channels = kernel.shape
    if kh % 2 == 0 or kw % 2 == 0:
        raise ValueError(f"tap_conv_transpose needs an odd kernel size, received {kh}x{kw}.")

    @tf.custom_gradient
    def conv_transpose(x, kernel):
        batch, height, width = tf.shape(x)[0], tf.shape(x)[1], tf.shape(x)[2]
        flipped = tf.reverse(kernel, axis=[0, 1])  # (kh, kw, out, in)
        weights = tf.reshape(tf.transpose(flipped, (3, 0, 1, 2)), (in_channels, kh * kw * out_channels))
        pixels = tf.reshape(x, (-1, in_channels))  # (batch·H·W, in)
        planes = tf.matmul(weights, pixels, transpose_a=True, transpose_b=True)  # (kh·kw·out, batch·H·W)
        planes = tf.reshape(planes, (kh, kw, out_channels, batch, height, width))
        ph, pw = (kh - 1) // 2, (kw - 1) // 2
        planes = tf.pad(planes, [[0, 0], [0, 0], [0, 0], [0, 0], [ph, ph], [pw, pw]])
        summed = tf.add_n([planes[i, j, :, :, i:i + height, j:j + width] for i in range(kh) for j in range(kw)])
        y = tf.transpose(summed, (1, 2, 3, 0))  # (batch, H, W, out)

        def grad(dy):
            dx = tf.nn.conv2d(dy, kernel, strides=1, padding="SAME")
            dkernel = tf.raw_ops.Conv2DBackpropFilter(input=dy, filter_sizes=tf.shape(kernel), out_backprop=x,
                                                      strides=[1, 1, 1, 1], padding="SAME")
            return dx, dkernel

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

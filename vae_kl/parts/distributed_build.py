"""The one place this project changes how Keras builds a model: not again, once it is built, under tf.distribute.

Keras 3's TensorFlow trainer (`_maybe_symbolic_build`, checked on Keras 3.15) builds a model under a
distribution strategy symbolically at the start of fit, from the first batch reduced across the replicas
with a MEAN. When the replicas' slices of the global batch differ in size (a global batch the replicas do
not divide), that reduction fails, although the VAE and its optimizer are built before fit and there is
nothing left to build. tests/test_distribute.py::test_keras_still_needs_the_build_fix shows the failure in a
plain keras.Model; it fails once a Keras release builds such a model, and then this class can go.
"""

import keras


class BuiltOnceModel(keras.Model):
    """keras.Model whose fit skips the symbolic build when the optimizer is built already (see the module)."""

    def _maybe_symbolic_build(self, iterator=None, data_batch=None):
        if self.optimizer is not None and self.optimizer.built:
            return
        super()._maybe_symbolic_build(iterator=iterator, data_batch=data_batch)

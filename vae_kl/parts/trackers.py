"""The VAE's metric: the running means of its loss terms, in one Keras metric."""

import keras
from keras import ops


@keras.saving.register_keras_serializable(package="vae_kl")
class WeightedMeans(keras.metrics.Metric):
    """Running means of several scalars, each batch weighted by its size; result() is {name: mean}.

    The same numbers as one keras.metrics.Mean per name updated with sample_weight, in one
    vector add per step instead of about fifteen small ops per Mean, which for four Means
    cost 3 to 5 % of a train step on a 2-core CPU (docs/performance.md).
    """

    def __init__(self, names, name="terms", **kwargs):
        super().__init__(name=name, **kwargs)
        self.names = tuple(names)
        self.totals = self.add_variable(shape=(len(self.names),), initializer="zeros", name="totals")
        self.count = self.add_variable(shape=(), initializer="zeros", name="count")

    def update_state(self, values, weight):
        """values: {name: the batch's mean} (others ignored) or a (len(names),) vector; weight: the batch's size."""
        if isinstance(values, dict):
            values = ops.stack([values[name] for name in self.names])
        weight = ops.cast(weight, self.dtype)
        self.totals.assign_add(ops.cast(values, self.dtype) * weight)
        self.count.assign_add(weight)

    @staticmethod
    def of_terms(terms, loss, log_sigma, batch):
        """{name: value} the VAE reports for a batch: the loss, the mean reconstruction, KL and −ELBO per digit
        (the true KL, whatever free bits did to the loss), the TC estimate and σ when there are any.

        Under tf.distribute (batch: a slicing.GlobalBatch) "loss" and "sigma" are the global batch's and the
        others this replica's means: weighted by the local batch size, the replicas' sums give the global means.
        """
        kl = ops.sum(terms.kl_per_dim, axis=1)  # (batch,)
        return {"loss": loss, "reconstruction": batch.local_mean(terms.reconstruction), "kl": batch.local_mean(kl),
                "neg_elbo": batch.local_mean(terms.reconstruction + kl), "tc": terms.tc,
                "sigma": None if log_sigma is None else ops.exp(log_sigma)}

    def result(self):
        means = ops.divide_no_nan(self.totals, self.count)  # (len(names),)
        return {name: means[i] for i, name in enumerate(self.names)}

    def get_config(self):
        return {**super().get_config(), "names": list(self.names)}

"""Loss terms of the VAE: pure, stateless functions written with `keras.ops`.

Shapes: images are (batch, 28, 28, 1) with pixels in [0, 1]; decoder outputs are
logits of the same shape; latent statistics are (batch, latent_dim).

Every reconstruction term here is a negative log-likelihood in nats per pixel.
The Bernoulli term is computed from logits, which is exact and stable. The
keras.io tutorial instead applies a sigmoid and calls Keras's binary
cross-entropy on probabilities, which clips them to [1e-7, 1 - 1e-7]; the two
agree except where the decoder is that confident (then the tutorial's loss is
capped at about 16.1 nats per pixel and its gradient vanishes).
"""

import math

from keras import ops

LOG_2PI = math.log(2.0 * math.pi)
# Below this |logit| the continuous Bernoulli terms switch to their Taylor series,
# because the exact forms divide 0 by 0 at logit 0 (probability 0.5).
_CB_TAYLOR_LOGIT = 1e-2
_CB_MEAN_TAYLOR_LOGIT = 0.25


def bernoulli_nll(x, logits):
    """Binary cross-entropy per pixel, from logits: -[x log p + (1-x) log(1-p)], p = sigmoid(logits).

    Uses softplus(l) - l·x, which never overflows (softplus is evaluated stably)
    and, unlike max(l, 0) - l·x + log(1 + exp(-|l|)), has the exact gradient
    sigmoid(l) - x even at l = 0, where max and |·| have kinks.
    Returns the same shape as `x`; no reduction.
    """
    return ops.softplus(logits) - logits * x


def gaussian_log_density(x, mean, log_var):
    """log N(x; μ, σ²) per element: -½[(x-μ)²/σ² + log σ² + log 2π]. No reduction.

    The one place the Gaussian log-density is written: the Gaussian likelihood, the encoder's
    q(z|x), every Gaussian prior and the evaluation all call it. Arguments broadcast.
    """
    inverse_var = math.exp(-log_var) if isinstance(log_var, (int, float)) else ops.exp(-log_var)
    return -0.5 * (ops.square(x - mean) * inverse_var + log_var + LOG_2PI)


def gaussian_log_normalizer(log_var):
    """log σ² + log 2π: the part of -2·log N(x; μ, σ²) that does not depend on x. Plain arithmetic, so numpy
    arrays work too (evaluate.information computes its (rows, n) blocks in numpy, in place)."""
    return log_var + LOG_2PI


def gaussian_nll(x, mean, log_sigma):
    """Gaussian negative log-density per pixel: (x-μ)²/(2σ²) + log σ + ½ log 2π.

    Args:
        x: targets, any shape.
        mean: μ, same shape as x.
        log_sigma: log σ, broadcastable to x (a scalar for one shared σ).
    Returns the shape of `x`; no reduction.
    """
    return -gaussian_log_density(x, mean, 2.0 * log_sigma)


def optimal_log_sigma(x, mean, batch_mean=None):
    """log σ* for a Gaussian decoder with one shared σ: σ*² is the mean squared error over the batch.

    Floored at log σ = -6, as in the σ-VAE (Rybkin et al. 2021), so a perfect fit
    cannot drive the density to infinity. Returns a scalar.

    batch_mean: (batch, ...) -> (...), the mean over the global batch when the batch is split
    between replicas (shards.GlobalBatch.mean); None: this batch's plain mean.
    No gradient flows through σ*: it minimises the batch's mean NLL, D·[mse/(2σ²) + log σ] + const,
    whose derivative in log σ, D·(1 - mse/σ²), is 0 at σ² = mse (below the floor σ* is a
    constant), so the dropped term is 0 up to the 1e-12 guard (envelope theorem). Stopping it
    also keeps replicated training exact: there each replica only sees its own examples' share
    of ∂loss/∂σ, which is not 0 on its own.
    """
    squared = ops.square(x - mean)  # (batch, H, W, C)
    mse = ops.mean(squared) if batch_mean is None else ops.mean(batch_mean(squared))
    return ops.stop_gradient(ops.maximum(0.5 * ops.log(mse + 1e-12), -6.0))


def continuous_bernoulli_log_norm(logits):
    """log C(λ) of the continuous Bernoulli (Loaiza-Ganem & Cunningham 2019), per element.

    With λ = sigmoid(l), C = 2 artanh(1-2λ)/(1-2λ) simplifies to l / tanh(l/2), an
    even function of l equal to 2 at l = 0. Near 0 we use the Taylor series
    log 2 + l²/12 - 7l⁴/1440; the exact branch sees a safe |l| so that neither
    branch of `where` produces NaN values or NaN gradients.
    """
    a = ops.abs(logits)
    small = a < _CB_TAYLOR_LOGIT
    safe = ops.where(small, _CB_TAYLOR_LOGIT, a)
    exact = ops.log(safe) - ops.log(ops.tanh(0.5 * safe))
    sq = ops.square(logits)
    series = math.log(2.0) + sq / 12.0 - 7.0 * ops.square(sq) / 1440.0
    return ops.where(small, series, exact)


def continuous_bernoulli_nll(x, logits):
    """Continuous Bernoulli negative log-density per pixel: BCE(x, λ) - log C(λ). No reduction."""
    return bernoulli_nll(x, logits) - continuous_bernoulli_log_norm(logits)


def continuous_bernoulli_mean(logits):
    """Mean of the continuous Bernoulli, E[x] = λ/(2λ-1) + 1/(2 artanh(1-2λ)), per element.

    In logits this is sigmoid(l)/tanh(l/2) - 1/l; near l = 0 the two terms cancel,
    so we use the series 1/2 + l/12 - l³/720 there.
    """
    small = ops.abs(logits) < _CB_MEAN_TAYLOR_LOGIT
    safe = ops.where(small, _CB_MEAN_TAYLOR_LOGIT, logits)
    exact = ops.sigmoid(safe) / ops.tanh(0.5 * safe) - 1.0 / safe
    series = 0.5 + logits / 12.0 - ops.power(logits, 3) / 720.0
    return ops.where(small, series, exact)


def sum_over_pixels(per_pixel):
    """Sum a (batch, ...) tensor over all but the batch axis; returns (batch,).

    The flattened size is spelled out when it is static: reshape cannot infer a -1 for an empty
    batch, which a replica gets when the global batch is smaller than the number of replicas.
    """
    inner = per_pixel.shape[1:]
    size = math.prod(inner) if all(d is not None for d in inner) else -1
    return ops.sum(ops.reshape(per_pixel, (ops.shape(per_pixel)[0], size)), axis=1)


def gaussian_kl(z_mean, z_log_var, prior_log_var=0.0):
    """KL(N(μ, σ²) || N(0, s²)) per latent dimension, in closed form: ½(σ²/s² + μ²/s² - 1 - log σ² + log s²).

    prior_log_var is log s², a Python number (0: the standard normal). σ²/s² - 1 is computed as
    expm1(log σ² - log s²), so a collapsed unit (σ = s) gets a KL near 0 rather than float32
    round-off of either sign. Returns (batch, latent_dim); no reduction.
    """
    ratio = z_log_var - prior_log_var
    return 0.5 * (ops.expm1(ratio) - ratio + ops.square(z_mean) * math.exp(-prior_log_var))


def batch_average(values):
    """The mean over the batch axis: (batch, ...) -> (...)."""
    return ops.mean(values, axis=0)


def reduction_scale(reduction, size):
    """What a `mean` reduction over `size` values multiplies their sum by: 1/size; a `sum`: 1."""
    return 1.0 / size if reduction == "mean" else 1.0


def free_bits_kl(kl_per_dim, free_bits, batch_mean=batch_average):
    """The KL the training objective sees under free bits (Kingma et al. 2016).

    Each dimension's KL is averaged over the batch and then floored at τ nats:
    sum_j max(mean_batch KL_j, τ). Below τ the gradient is zero, so the encoder is
    free to use those nats. Returns a scalar; with τ = 0 this is the batch-mean KL.
    batch_mean averages over the (global) batch, see training_objective.
    """
    return ops.sum(ops.maximum(batch_mean(kl_per_dim), free_bits))


def training_objective(rec_per_example, kl_per_dim, num_pixels, latent_dim, reconstruction_reduction,
                       kl_reduction, kl_weight, free_bits=0.0, batch_mean=batch_average):
    """The loss that training minimises, averaged over the batch. Returns a scalar.

    Per example: rec_scale·Σ_pixels NLL + kl_weight·kl_scale·Σ_j KL_j, where a
    `mean` reduction sets rec_scale = 1/num_pixels or kl_scale = 1/latent_dim and
    `sum` sets it to 1. This equals rec_scale·[Σ NLL + β·KL] with the effective
    β = kl_weight·kl_scale/rec_scale (see objective.py).

    Args:
        rec_per_example: (batch,) reconstruction NLL summed over pixels.
        kl_per_dim: (batch, latent_dim) KL per latent dimension, or (batch, 1) total KL for a prior
            whose KL does not split per dimension (free bits then need free_bits = 0).
        num_pixels: D, the number of pixel values per image (pixels × channels).
        latent_dim: J, for the `mean` KL reduction.
        reconstruction_reduction, kl_reduction: "sum" or "mean".
        kl_weight: λ, a float or a scalar tensor (the weight in force under a schedule).
        free_bits: τ in nats per latent dimension; 0 disables it.
        batch_mean: (batch, ...) -> (...), the mean over the batch. Under tf.distribute each replica
            holds a slice of the global batch, and shards.GlobalBatch.mean averages over the global
            batch instead, so the free-bits floor max(mean KL_j, τ) and the reductions refer to the
            global batch, as on one device.
    """
    rec_scale = reduction_scale(reconstruction_reduction, num_pixels)
    kl_scale = reduction_scale(kl_reduction, latent_dim)
    kl = free_bits_kl(kl_per_dim, free_bits, batch_mean)
    return rec_scale * batch_mean(rec_per_example) + kl_weight * kl_scale * kl


def capacity_objective(rec_per_example, kl_per_dim, num_pixels, reconstruction_reduction, capacity, gamma,
                       batch_mean=batch_average):
    """The capacity objective of Burgess et al. (2018), averaged over the batch. Returns a scalar.

    Per batch: rec_scale·[mean Σ_pixels NLL + gamma·|mean Σ_j KL_j - capacity|], rec_scale = 1/num_pixels for
    a `mean` reconstruction reduction, else 1. The KL is the batch mean of the summed KL, so the target
    capacity C is in nats per example.

    Args:
        rec_per_example: (batch,) reconstruction NLL summed over pixels.
        kl_per_dim: (batch, latent_dim), or (batch, 1) for a prior whose KL does not split; summed here.
        capacity: C in force at this step (a float or scalar tensor); gamma: its weight γ.
    """
    rec_scale = reduction_scale(reconstruction_reduction, num_pixels)
    kl = batch_mean(ops.sum(kl_per_dim, axis=1))
    return rec_scale * (batch_mean(rec_per_example) + gamma * ops.abs(kl - capacity))


def total_correlation(z, z_mean, z_log_var):
    """The minibatch estimate of the total correlation TC = E_q(z)[log q(z) - Σ_j log q(z_j)] of the
    aggregate posterior q(z) = mean_n q(z|x_n) (β-TC-VAE, Chen et al. 2018). Returns a scalar, nats per example.

    z, z_mean, z_log_var: (M, J), one sample z_i ~ q(z|x_i) per digit of the batch. Minibatch weighted
    sampling: q(z_i) and each q(z_ij) are the mixtures of the batch's M posteriors at z_i,
    log q(z_i) ≈ logsumexp_m log q(z_i|x_m) - log M, and TC is the mean over i of the difference.
    The paper normalises by N·M (N the data size) instead of M: a constant (J - 1)·log N that does not
    change the gradient, left out so the value estimates TC itself.
    Bias (docs/kl_weighting.md): each digit's own posterior is 1/M of the mixture rather than 1/N, so when
    the code carries more than about log M nats the estimate is too high; it never exceeds J·log M.
    """
    log_q = gaussian_log_density(ops.expand_dims(z, 1), ops.expand_dims(z_mean, 0),
                                 ops.expand_dims(z_log_var, 0))  # (M, M, J): log q(z_ij | x_m)
    log_joint = ops.logsumexp(ops.sum(log_q, axis=2), axis=1)  # (M,): log q(z_i) + log M
    log_marginals = ops.sum(ops.logsumexp(log_q, axis=1), axis=1)  # (M,): Σ_j log q(z_ij) + J·log M
    batch = ops.cast(ops.shape(z)[0], z.dtype)
    return ops.mean(log_joint - log_marginals) + (z.shape[1] - 1) * ops.log(batch)

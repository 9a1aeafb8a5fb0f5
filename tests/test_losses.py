"""Loss math against independent references: numpy formulas, Monte Carlo and quadrature."""

import math

import keras
import numpy as np
import pytest
import tensorflow as tf
from numpy.polynomial.legendre import leggauss

import losses

RNG = np.random.default_rng(0)


def np_bce(x, p):
    return -(x * np.log(p) + (1 - x) * np.log(1 - p))


def sigmoid(logit):
    return 1.0 / (1.0 + np.exp(-logit))


def test_bernoulli_nll_matches_the_bce_formula():
    logits = RNG.normal(0, 4, size=(5, 28, 28, 1))
    x = RNG.uniform(size=logits.shape)
    got = np.asarray(losses.bernoulli_nll(x, logits))
    np.testing.assert_allclose(got, np_bce(x, sigmoid(logits)), rtol=1e-9, atol=1e-12)


def test_bernoulli_nll_equals_keras_bce_on_probabilities_away_from_clipping():
    logits = RNG.normal(0, 3, size=(64, 784)).astype("float32")  # |l| < 15: Keras's clipping is not reached.
    x = RNG.uniform(size=logits.shape).astype("float32")
    ours = np.asarray(losses.bernoulli_nll(x, logits)).mean(axis=1)
    theirs = np.asarray(keras.losses.binary_crossentropy(x, keras.ops.sigmoid(logits)))  # Mean over pixels.
    np.testing.assert_allclose(ours, theirs, rtol=1e-4)


def test_bernoulli_nll_is_finite_where_probabilities_would_round_to_zero():
    logits = np.array([-200.0, 200.0], dtype="float32")
    got = np.asarray(losses.bernoulli_nll(np.array([1.0, 0.0], "float32"), logits))
    np.testing.assert_allclose(got, [200.0, 200.0], rtol=1e-6)


def test_summed_reconstruction_is_784_times_the_mean():
    rec = RNG.uniform(100, 200, size=(8,)).astype("float32")
    kl = np.zeros((8, 2), "float32")
    total = float(losses.training_objective(rec, kl, 784, 2, "sum", "sum", 1.0))
    mean = float(losses.training_objective(rec, kl, 784, 2, "mean", "sum", 1.0))
    assert math.isclose(total, 784 * mean, rel_tol=1e-6)
    assert math.isclose(total, rec.mean(), rel_tol=1e-6)


def test_objective_weights_kl_by_lambda_and_latent_reduction():
    rec = np.full((4,), 50.0, "float32")
    kl = np.tile(np.array([[1.0, 3.0]], "float32"), (4, 1))
    assert math.isclose(float(losses.training_objective(rec, kl, 784, 2, "sum", "sum", 0.5)), 50 + 0.5 * 4,
                        rel_tol=1e-6)
    assert math.isclose(float(losses.training_objective(rec, kl, 784, 2, "sum", "mean", 1.0)), 50 + 2.0, rel_tol=1e-6)


def test_gaussian_kl_matches_a_monte_carlo_estimate():
    mu, log_var = np.array([[0.7, -1.2]]), np.array([[-0.5, 0.8]])
    sd = np.exp(0.5 * log_var)
    z = mu + sd * RNG.standard_normal((400_000, 2))
    log_q = -0.5 * (((z - mu) / sd) ** 2 + log_var + math.log(2 * math.pi))
    log_p = -0.5 * (z ** 2 + math.log(2 * math.pi))
    estimate = (log_q - log_p).mean(axis=0)
    np.testing.assert_allclose(np.asarray(losses.gaussian_kl(mu, log_var))[0], estimate, atol=0.01)


def test_gaussian_kl_is_zero_at_the_prior():
    np.testing.assert_allclose(np.asarray(losses.gaussian_kl(np.zeros((3, 4)), np.zeros((3, 4)))), 0.0, atol=1e-12)


def test_gaussian_nll_matches_the_normal_log_density():
    x, mean, log_sigma = RNG.uniform(size=100), RNG.uniform(size=100), np.array(-1.3)
    sigma = math.exp(float(log_sigma))
    expected = 0.5 * ((x - mean) / sigma) ** 2 + math.log(sigma) + 0.5 * math.log(2 * math.pi)
    np.testing.assert_allclose(np.asarray(losses.gaussian_nll(x, mean, log_sigma)), expected, rtol=1e-9)


def test_optimal_sigma_is_the_root_mean_squared_error():
    x, mean = RNG.uniform(size=(16, 784)), RNG.uniform(size=(16, 784))
    got = float(losses.optimal_log_sigma(x, mean))
    assert math.isclose(math.exp(got), math.sqrt(np.mean((x - mean) ** 2)), rel_tol=1e-6)


def test_learned_sigma_moves_toward_the_optimal_sigma():
    x = RNG.uniform(size=(32, 784)).astype("float32")
    mean = np.clip(x + RNG.normal(0, 0.2, size=x.shape), 0, 1).astype("float32")
    target = math.sqrt(np.mean((x - mean) ** 2))
    log_sigma = tf.Variable(0.0)
    optimizer = keras.optimizers.Adam(0.05)
    distances = []
    for _ in range(300):
        with tf.GradientTape() as tape:
            loss = tf.reduce_mean(losses.gaussian_nll(x, mean, log_sigma))
        optimizer.apply([tape.gradient(loss, log_sigma)], [log_sigma])
        distances.append(abs(math.exp(float(log_sigma)) - target))
    assert distances[-1] < 0.01 * target
    assert distances[-1] < distances[0]


def cb_density(x, logit):
    return np.exp(-np.asarray(losses.continuous_bernoulli_nll(x, np.full_like(x, logit))))


@pytest.mark.parametrize("lam", [1e-4, 0.01, 0.2, 0.4999, 0.5 - 1e-6, 0.5, 0.5 + 1e-6, 0.5001, 0.7, 0.99, 1 - 1e-4])
def test_continuous_bernoulli_density_integrates_to_one(lam):
    nodes, weights = leggauss(200)
    x = 0.5 * (nodes + 1.0)  # Gauss-Legendre nodes mapped to [0, 1].
    logit = math.log(lam) - math.log1p(-lam)
    integral = 0.5 * np.sum(weights * cb_density(x, logit))
    assert math.isclose(integral, 1.0, rel_tol=1e-6)


def test_continuous_bernoulli_log_norm_matches_the_closed_form():
    lam = np.array([0.01, 0.1, 0.3, 0.45, 0.55, 0.9, 0.999])
    expected = np.log(2 * np.arctanh(1 - 2 * lam) / (1 - 2 * lam))
    logits = np.log(lam) - np.log1p(-lam)
    np.testing.assert_allclose(np.asarray(losses.continuous_bernoulli_log_norm(logits)), expected, rtol=1e-6)


@pytest.mark.parametrize("logit", [0.0, 4e-6, -4e-6, 0.00999, 0.01001, 0.3])
def test_continuous_bernoulli_gradients_are_finite_and_correct_near_one_half(logit):
    x = tf.constant([0.3], "float64")
    variable = tf.Variable([logit], dtype="float64")
    with tf.GradientTape() as tape:
        nll = losses.continuous_bernoulli_nll(x, variable)
    grad = float(tape.gradient(nll, variable)[0])
    h = 1e-5
    numeric = (float(losses.continuous_bernoulli_nll(x, tf.constant([logit + h], "float64"))[0])
               - float(losses.continuous_bernoulli_nll(x, tf.constant([logit - h], "float64"))[0])) / (2 * h)
    assert math.isfinite(grad)
    assert math.isclose(grad, numeric, abs_tol=1e-6)


@pytest.mark.parametrize("lam", [0.05, 0.3, 0.5, 0.5 + 1e-6, 0.52, 0.8])
def test_continuous_bernoulli_mean_matches_integration(lam):
    nodes, weights = leggauss(200)
    x = 0.5 * (nodes + 1.0)
    logit = math.log(lam) - math.log1p(-lam)
    expected = 0.5 * np.sum(weights * x * cb_density(x, logit))
    got = float(losses.continuous_bernoulli_mean(np.array([logit], "float32"))[0])
    assert math.isclose(got, expected, abs_tol=1e-5)


def test_free_bits_floors_each_dimension_and_stops_its_gradient():
    z_mean = tf.Variable([[0.1, 2.0], [-0.1, 2.2]])
    z_log_var = tf.Variable(tf.zeros((2, 2)))
    with tf.GradientTape() as tape:
        kl = losses.gaussian_kl(z_mean, z_log_var)
        floored = losses.free_bits_kl(kl, 0.5)
    grad = tape.gradient(floored, z_mean).numpy()
    true = np.asarray(kl).mean(axis=0)
    assert true[0] < 0.5 < true[1]
    assert math.isclose(float(floored), 0.5 + true[1], rel_tol=1e-6)
    np.testing.assert_allclose(grad[:, 0], 0.0)  # Below the threshold: no pressure toward the prior.
    assert np.all(np.abs(grad[:, 1]) > 0)


def test_free_bits_of_zero_is_the_plain_batch_mean():
    kl = RNG.uniform(size=(8, 3)).astype("float32")
    assert math.isclose(float(losses.free_bits_kl(kl, 0.0)), kl.mean(axis=0).sum(), rel_tol=1e-6)

"""Priors and likelihoods: registries, densities against closed forms and quadrature, the KL algebra."""

import math

import numpy as np
import pytest

from vae_kl.choices import likelihoods, priors
from vae_kl.spec import config

RNG = np.random.default_rng(3)


def test_the_config_accepts_exactly_the_registered_names():
    assert priors.FAMILY.names() == ("normal", "standard_normal", "mixture", "vamp")
    assert likelihoods.FAMILY.names() == ("bernoulli", "continuous_bernoulli", "gaussian")
    for name in priors.FAMILY.names():
        assert config.from_dict({"model": {"prior": name}}).model.prior == name
    with pytest.raises(config.ConfigError, match="model.prior expects one of normal, standard_normal"):
        config.from_dict({"model": {"prior": "laplace"}})
    with pytest.raises(ValueError, match="Unknown loss.likelihood 'laplace'; registered: bernoulli"):
        likelihoods.FAMILY.get("laplace")


def test_settings_only_some_choices_read_are_refused_with_others():
    assert priors.FAMILY.readers("prior_components") == ["mixture", "vamp"]
    with pytest.raises(config.ConfigError, match="model.prior_components is only read by model.prior mixture or vamp"):
        config.from_dict({"model": {"prior_components": 3}})
    with pytest.raises(config.ConfigError, match="loss.gaussian_sigma is only read by loss.likelihood gaussian"):
        config.from_dict({"loss": {"gaussian_sigma": 0.5}})
    with pytest.raises(config.ConfigError, match="free_bits floors the KL of each latent dimension"):
        config.from_dict({"model": {"prior": "vamp"}, "loss": {"free_bits": 0.5}})


def normal_kl_numpy(mu, log_var, s):
    """KL(N(μ, σ²) || N(0, s²)) per dimension, written out independently in numpy."""
    var = np.exp(log_var)
    return np.log(s) - 0.5 * log_var + (var + mu ** 2) / (2 * s ** 2) - 0.5


@pytest.mark.parametrize("scale", [0.3, 1.0, 4.0])
def test_normal_prior_kl_is_the_closed_form_and_its_monte_carlo_estimate(scale):
    prior = priors.Normal(3, scale=scale)
    mu, log_var = RNG.normal(size=(1, 3)), RNG.normal(scale=0.5, size=(1, 3))
    closed = np.asarray(prior.kl(mu, log_var, None))
    np.testing.assert_allclose(closed, normal_kl_numpy(mu, log_var, scale), rtol=1e-6)
    z = mu + np.exp(0.5 * log_var) * RNG.standard_normal((200_000, 3))
    estimate = np.asarray(priors.Prior.kl(prior, np.broadcast_to(mu, z.shape), np.broadcast_to(log_var, z.shape), z))
    assert math.isclose(estimate.mean(), closed.sum(), rel_tol=0.02, abs_tol=0.01)


def test_a_normal_priors_kl_in_terms_of_the_standard_normals():
    # KL(q || N(0, s²)) = KL(q || N(0, 1)) + log s + ½(1/s² - 1)·E_q[z²]: the README's first line of algebra.
    mu, log_var, s = RNG.normal(size=(50, 2)), RNG.normal(size=(50, 2)), 2.5
    kl_s = np.asarray(priors.Normal(2, scale=s).kl(mu, log_var, None))
    kl_1 = np.asarray(priors.StandardNormal(2).kl(mu, log_var, None))
    np.testing.assert_allclose(kl_s, kl_1 + math.log(s) + 0.5 * (1 / s ** 2 - 1) * (np.exp(log_var) + mu ** 2),
                               rtol=1e-10, atol=1e-12)
    # And a rescaled code pays exactly the standard normal's KL: the prior's scale is a reparametrisation.
    np.testing.assert_allclose(np.asarray(priors.Normal(2, scale=s).kl(s * mu, log_var + 2 * math.log(s), None)),
                               kl_1, rtol=1e-10, atol=1e-12)


@pytest.mark.parametrize("lam", [0.5, 2.0, 784.0])
def test_lambda_times_kl_is_a_narrower_prior_plus_an_entropy_term_not_any_prior(lam):
    # λ·KL(q || p) = KL(q || p^λ/Z) - (λ - 1)·H(q) - log Z; for p = N(0, 1), p^λ/Z = N(0, 1/λ) and
    # log Z = ½(1 - λ) log 2π - ½ log λ per dimension. The H(q) term has no prior that absorbs it.
    mu, log_var = RNG.normal(size=(40, 1)), RNG.normal(size=(40, 1))
    kl_1 = np.asarray(priors.StandardNormal(1).kl(mu, log_var, None))
    kl_narrow = np.asarray(priors.Normal(1, scale=lam ** -0.5).kl(mu, log_var, None))
    entropy = 0.5 * (math.log(2 * math.pi * math.e) + log_var)
    log_z = 0.5 * (1 - lam) * math.log(2 * math.pi) - 0.5 * math.log(lam)
    np.testing.assert_allclose(lam * kl_1, kl_narrow - (lam - 1) * entropy - log_z, rtol=1e-9, atol=1e-9)
    # Two posteriors with the same KL(q || N(0, 1/λ)) but different entropies get different λ·KL.
    if lam != 1:
        assert np.std(lam * kl_1 - kl_narrow) > 0.1


def density_integrates_to_one(log_prob, low=-12.0, high=12.0, n=20001):
    grid = np.linspace(low, high, n)[:, None]
    return np.trapezoid(np.exp(np.asarray(log_prob(grid), dtype="float64")), grid[:, 0])


def test_mixture_prior_is_a_normalised_mixture_matching_numpy():
    prior = priors.Mixture(1, components=3)
    prior.means.assign(np.array([[-2.0], [0.5], [3.0]], "float32"))
    prior.log_vars.assign(np.log(np.array([[0.3], [1.0], [0.1]], "float32")))
    prior.logits.assign(np.array([0.0, 1.0, -1.0], "float32"))
    assert math.isclose(density_integrates_to_one(prior.log_prob), 1.0, rel_tol=1e-5)
    weights = np.exp([0.0, 1.0, -1.0]) / np.exp([0.0, 1.0, -1.0]).sum()
    z = np.array([[-1.0], [0.0], [2.5]])
    by_hand = np.log(sum(w * np.exp(-(z - m) ** 2 / (2 * v)) / np.sqrt(2 * np.pi * v)
                         for w, m, v in zip(weights, [-2.0, 0.5, 3.0], [0.3, 1.0, 0.1])))[:, 0]
    np.testing.assert_allclose(np.asarray(prior.log_prob(z)), by_hand, rtol=1e-5)
    samples = prior.sample(100_000, seed=0)
    assert math.isclose(samples.mean(), float(weights @ np.array([-2.0, 0.5, 3.0])), abs_tol=0.03)


def test_vamp_prior_is_the_mean_of_the_posteriors_at_its_pseudo_inputs():
    prior = priors.Vamp(1, components=4, image_shape=(2, 2, 1))

    def encode(images):  # A fixed "encoder": mean = sum of pixels, log variance = mean pixel - 1.
        images = np.asarray(images, dtype="float64")
        return images.sum(axis=(1, 2, 3))[:, None], images.mean(axis=(1, 2, 3))[:, None] - 1.0

    assert math.isclose(density_integrates_to_one(lambda z: prior.log_prob(z, encode)), 1.0, rel_tol=1e-5)
    means, log_vars = encode(prior.pseudo_inputs())
    z = np.array([[0.5], [2.0]])
    by_hand = np.log(np.mean(np.exp(-(z - means.T) ** 2 / (2 * np.exp(log_vars.T)))
                             / np.sqrt(2 * np.pi * np.exp(log_vars.T)), axis=1))
    np.testing.assert_allclose(np.asarray(prior.log_prob(z, encode)), by_hand, rtol=1e-5)
    pixels = np.asarray(prior.pseudo_inputs())
    assert pixels.shape == (4, 2, 2, 1) and pixels.min() > 0 and pixels.max() < 1
    with pytest.raises(ValueError, match="needs the encoder"):
        prior.log_prob(z)


def test_monte_carlo_kl_of_a_mixture_averages_to_the_standard_normals_when_it_is_one():
    # A one-component mixture at N(0, 1) is the standard normal: its Monte Carlo KL must average to the closed form.
    prior = priors.Mixture(2, components=1)
    prior.means.assign(np.zeros((1, 2), "float32"))
    mu, log_var = np.array([[1.0, -0.5]], "float32"), np.array([[-1.0, 0.3]], "float32")
    z = (mu + np.exp(0.5 * log_var) * RNG.standard_normal((100_000, 2))).astype("float32")
    estimate = np.asarray(prior.kl(np.broadcast_to(mu, z.shape), np.broadcast_to(log_var, z.shape), z))
    assert estimate.shape == (100_000, 1)
    closed = float(np.asarray(priors.StandardNormal(2).kl(mu, log_var, None)).sum())
    assert math.isclose(estimate.mean(), closed, rel_tol=0.02)


def test_a_one_component_mixture_samples_without_a_warning():
    import warnings

    prior = priors.Mixture(2, components=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # Keras's "softmax over an axis of size 1" UserWarning would raise here.
        samples = prior.sample(2000, seed=0)
    assert samples.shape == (2000, 2)
    assert np.allclose(samples.mean(axis=0), np.asarray(prior.means)[0], atol=0.1)


@pytest.mark.parametrize("settings, message", [
    (["model.prior_scale=2"], "only read by model.prior normal"),
    (["model.prior_components=3"], "only read by model.prior mixture or vamp"),
    (["model.prior=mixture", "loss.free_bits=0.5"], "does not split per dimension"),
    (["model.prior=uniform"], "expects one of normal, standard_normal"),
    (["model.prior=normal", "model.prior_scale=0"], "must be >= 0.001"),
])
def test_prior_settings_are_validated(settings, message):
    with pytest.raises(config.ConfigError, match=message):
        config.load(None, settings)

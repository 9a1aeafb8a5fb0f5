"""recipes/: every file is a valid config that opens with its source, and the β it reproduces is derived by hand.

Nothing here imports TensorFlow: config.py is TensorFlow-free, objective.py is only imported when a fresh
interpreter shows that it loads without TensorFlow or Keras, and `train.py --explain` runs in a subprocess
(and only once train.py offers it).
"""

import functools
import glob
import math
import os
import re
import subprocess
import sys

import pytest

from conftest import ROOT
from vae_kl.spec import config, meaning

RECIPES = os.path.join(ROOT, "recipes")
D = 28 * 28  # Pixel values of an MNIST digit.

# β derived by hand from each source's code, as the recipe's opening comment explains, with plain arithmetic
# (not objective.py). J is the latent size the recipe sets; sse is the weight of the KL against the plain sum of
# squared errors when the recipe fixes a Gaussian σ (loss ∝ SSE + sse·KL), else None.
HAND = {
    # Σ_pixels BCE + Σ_j KL: the ELBO.
    "keras_io": dict(beta=1.0, J=2, sse=None),
    # mean BCE × 28·28 = Σ_pixels BCE; the KL's reduce_mean runs over the batch and the J dims: + (1/J)·Σ KL.
    "keras_io_2020": dict(beta=1 / 2, J=2, sse=None),
    # (1/784)·Σ BCE + (1/2)·Σ KL = (1/784)·[Σ BCE + (784/2)·Σ KL].
    "keras_io_2020_no_784": dict(beta=784 / 2, J=2, sse=None),
    # (1/784)·Σ BCE + Σ KL = (1/784)·[Σ BCE + 784·Σ KL].
    "pixel_mean_kl_sum": dict(beta=784 / 1, J=2, sse=None),
    # (1/784)·Σ BCE + 0.1·(1/2)·Σ KL = (1/784)·[Σ BCE + 0.1·(784/2)·Σ KL].
    "normalised_kl_0.1": dict(beta=0.1 * 784 / 2, J=2, sse=None),
    # BCE and KL summed over everything, the batch included: the batch size is an overall factor.
    "pytorch_examples": dict(beta=1.0, J=20, sse=None),
    # mean MSE = (1/784)·SSE, plus (128/60000)·Σ KL = (1/784)·[SSE + (128/60000)·784·Σ KL]; with σ² = 1/2
    # the Gaussian NLL is SSE + const, so β and the SSE weight are the same number.
    "pytorch_vae_kld_weight": dict(beta=128 / 60000 * 784, J=128, sse=128 / 60000 * 784),
    # SSE + 1·Σ KL, written as a Gaussian with σ² = 1/2.
    "mse_plus_lambda_kl": dict(beta=1.0, J=2, sse=1.0),
    # Σ Gaussian NLL (σ from the data) + Σ KL: the ELBO.
    "sigma_vae": dict(beta=1.0, J=20, sse=None),
    # The VAE k = 1 trains on log p(x|z) - KL, both summed (iwae.py's log weights, num_samples 1): the ELBO.
    "burda2015_vae": dict(beta=1.0, J=50, sse=None),
    "burda2015_vae_short": dict(beta=1.0, J=50, sse=None),
}

EFFECTIVE_BETA = re.compile(r"Effective β = ([0-9.e+-]+)")
BETA_NORM = re.compile(r"β_norm = β·J/D = [^=]*= ([0-9.e+-]+)")
QUOTED_CODE = re.compile(r"^# {5,}\S.*[=(]")  # A code line quoted in the comment, indented as a block.


def recipe_paths():
    return sorted(glob.glob(os.path.join(RECIPES, "*.yaml")))


def name_of(path):
    return os.path.basename(path)[: -len(".yaml")]


def opening_comment(path):
    """The comment lines the file opens with, up to the first line that is not a comment."""
    lines = []
    with open(path, encoding="utf-8") as handle:
        for line in handle:
            if not line.startswith("#"):
                break
            lines.append(line.rstrip("\n"))
    return lines


def beta_by_the_formula(loss, latent_dim):
    """β = λ·kl_scale/rec_scale with rec_scale 1/D for a mean over pixels and kl_scale 1/J for a mean over the
    latent dims; with kl_weight_norm set, β = β_norm·D/J (config.yaml)."""
    if loss.kl_weight_norm is not None:
        return loss.kl_weight_norm * D / latent_dim
    weight = 1.0 if loss.kl_weight is None else loss.kl_weight
    rec_scale = 1 / D if loss.reconstruction_reduction == "mean" else 1.0
    kl_scale = 1 / latent_dim if loss.kl_reduction == "mean" else 1.0
    return weight * kl_scale / rec_scale


@functools.cache
def _objective_is_tensorflow_free():
    """Whether importing vae_kl.spec.objective loads neither TensorFlow nor Keras (asked of a fresh interpreter)."""
    probe = ("import sys; from vae_kl.spec import objective; "
             "sys.exit(int(any(m.split('.')[0] in ('tensorflow', 'keras') for m in sys.modules)))")
    try:
        done = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return done.returncode == 0


@functools.cache
def _explain_available():
    """Whether train.py offers --explain (another change adds it)."""
    try:
        done = subprocess.run([sys.executable, "train.py", "--help"], cwd=ROOT, capture_output=True, text=True,
                              timeout=60)
    except subprocess.TimeoutExpired:
        return False
    return "--explain" in done.stdout


def test_the_recipes_folder_holds_every_recipe_of_the_table_and_no_other():
    names = {name_of(path) for path in recipe_paths()}
    assert names, "recipes/ holds no *.yaml file"
    missing = sorted(names - HAND.keys())
    assert not missing, f"recipes without a hand-derived β in tests/test_recipes.py: {missing}"
    assert not HAND.keys() - names, f"β table entries without a recipe: {sorted(HAND.keys() - names)}"
    assert not [p for p in os.listdir(RECIPES) if not p.endswith(".yaml")], "recipes/ should hold only .yaml files"


@pytest.mark.parametrize("path", recipe_paths(), ids=name_of)
def test_recipe_is_a_valid_config_with_the_latent_size_its_beta_assumes(path):
    cfg, raw = config.load(path)
    assert isinstance(raw, dict) and raw, "a recipe sets at least its loss convention"
    assert cfg.model.latent_dim == HAND[name_of(path)]["J"]


@pytest.mark.parametrize("path", recipe_paths(), ids=name_of)
def test_recipe_opens_with_its_source_and_the_quoted_code(path):
    comment = opening_comment(path)
    assert comment, "a recipe opens with a comment block"
    text = "\n".join(comment)
    assert "Source:" in text
    assert "verbatim" in text.lower(), "say which lines are quoted verbatim"
    assert any(QUOTED_CODE.match(line) for line in comment), "quote at least one code line, indented as a block"
    assert "http" in text, "give the source's address"


@pytest.mark.parametrize("path", recipe_paths(), ids=name_of)
def test_the_comment_states_the_hand_derived_beta_and_beta_norm(path):
    hand = HAND[name_of(path)]
    text = "\n".join(opening_comment(path))
    beta, norm = EFFECTIVE_BETA.search(text), BETA_NORM.search(text)
    assert beta and norm, "state 'Effective β = ...' and 'β_norm = β·J/D = ... = ...' in the opening comment"
    assert math.isclose(float(beta.group(1)), hand["beta"], rel_tol=1e-4)
    assert math.isclose(float(norm.group(1)), hand["beta"] * hand["J"] / D, rel_tol=1e-3)
    if hand["beta"] >= 30:
        assert "expect posterior collapse" in text.lower()


@pytest.mark.parametrize("path", recipe_paths(), ids=name_of)
def test_the_config_encodes_the_hand_derived_beta(path):
    hand = HAND[name_of(path)]
    cfg, _ = config.load(path)
    beta = beta_by_the_formula(cfg.loss, cfg.model.latent_dim)
    assert math.isclose(beta, hand["beta"], rel_tol=1e-9)
    sigma = cfg.loss.gaussian_sigma
    fixed = cfg.loss.likelihood == "gaussian" and isinstance(sigma, (int, float))
    assert fixed == (hand["sse"] is not None)
    if fixed:  # SSE/(2σ²) + β·KL = (1/(2σ²))·[SSE + 2σ²β·KL] up to a constant.
        assert math.isclose(2 * sigma ** 2 * beta, hand["sse"], rel_tol=1e-9)


@pytest.mark.skipif(not _objective_is_tensorflow_free(), reason="objective.py still imports TensorFlow/Keras")
@pytest.mark.parametrize("path", recipe_paths(), ids=name_of)
def test_objective_py_agrees_with_the_hand_derived_beta(path):
    from vae_kl.spec import objective

    hand = HAND[name_of(path)]
    cfg, _ = config.load(path)
    loss, latent_dim = cfg.loss, cfg.model.latent_dim
    weight = objective.resolve_kl_weight(loss.kl_weight, loss.kl_weight_norm, loss.reconstruction_reduction,
                                         loss.kl_reduction, latent_dim, D)
    rec_scale, kl_scale = objective.scales(loss.reconstruction_reduction, loss.kl_reduction, latent_dim, D)
    assert math.isclose(weight * kl_scale / rec_scale, hand["beta"], rel_tol=1e-9)
    got = meaning.describe(loss.reconstruction_reduction, loss.kl_reduction, weight, latent_dim, D,
                           loss.likelihood, {"sigma": loss.gaussian_sigma})
    assert math.isclose(got["effective_beta"], hand["beta"], rel_tol=1e-9)
    assert math.isclose(got["beta_norm"], hand["beta"] * hand["J"] / D, rel_tol=1e-9)
    if hand["sse"] is not None:
        assert math.isclose(got["sse_equivalent_beta"], hand["sse"], rel_tol=1e-9)


@pytest.mark.skipif(not _explain_available(), reason="train.py has no --explain yet")
@pytest.mark.parametrize("path", recipe_paths(), ids=name_of)
def test_train_explain_prints_the_hand_derived_beta(path):
    recipe = os.path.relpath(path, ROOT)
    done = subprocess.run([sys.executable, "train.py", "--config", recipe, "--explain"], cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stdout + done.stderr
    found = EFFECTIVE_BETA.search(done.stdout)
    assert found, done.stdout
    assert math.isclose(float(found.group(1)), HAND[name_of(path)]["beta"], rel_tol=1e-4), done.stdout

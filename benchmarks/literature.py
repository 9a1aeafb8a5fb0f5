"""Our numbers beside the paper's: the MLP VAE of Burda et al. (2015), Table 1, on binarized MNIST.

    python benchmarks/literature.py --variant short --seeds 3 --data-path mnist.npz   # about 1 h a seed, 1 core
    python benchmarks/literature.py --variant full --seeds 1 --data-path mnist.npz    # about 10 h, 1 core
    python benchmarks/literature.py --variant short --speed-only                      # the training speed only

Trains recipes/burda2015_vae.yaml (full: 3,280 passes) or its short variant (328 passes) on full MNIST for
each seed with train.py, one run folder per seed in --output-dir (`<variant>_seed<N>`: a finished run is
reused, an unfinished one resumed), evaluates each with evaluate.py at the paper's k = 5,000 on the 10,000
test digits, and prints one table: the paper's test NLL and active units beside ours (mean ± standard error
over seeds), the gap, the −ELBO, the KL, wall time and digits per second. Then the training speed of this
trainer's MLP path against a plain Keras MLP VAE written the obvious way (Functional encoder and decoder, a
train_step with the summed BCE and the KL), both timed in this process on the same binarized digits, batch
20: the median of --repeats timings of --speed-steps steps each, and their ratio. --data-path is the full
MNIST as an .npz in keras.datasets' layout (data.source npz); without it, data.source mnist (downloads).
"""

import argparse
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from end_to_end import cpu_name  # noqa: E402
from tutorial_vae import sampling_layer  # noqa: E402

import train  # noqa: E402  (TensorFlow only once a model is built)
from vae_kl.data import sources  # noqa: E402
from vae_kl.spec import config  # noqa: E402
from vae_kl.training import session  # noqa: E402

RECIPES = {"full": "burda2015_vae.yaml", "short": "burda2015_vae_short.yaml"}
# Burda, Grosse & Salakhutdinov (2016), Table 1, MNIST, one stochastic layer, VAE trained with k = 1.
PAPER = {"nll_nats": 86.76, "active_units": 19, "k": 5000}


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--variant", choices=sorted(RECIPES), default="short", help="The recipe (default short).")
    parser.add_argument("--seeds", type=int, default=None, help="Seeds 1337, 1338, ... (default 3 short, 1 full).")
    parser.add_argument("--data-path", default=None, help="Full MNIST as an .npz (default: download it).")
    parser.add_argument("--output-dir", default=os.path.join(ROOT, "outputs", "literature"),
                        help="Where the run folders go (default outputs/literature).")
    parser.add_argument("--iwae-k", type=int, default=PAPER["k"], help="The evaluation's k (default 5000).")
    parser.add_argument("--max-minutes", type=float, default=120, help="evaluate.py's limit per run (default 120).")
    parser.add_argument("--speed-steps", type=int, default=500, help="Steps per speed timing (default 500).")
    parser.add_argument("--repeats", type=int, default=5, help="Speed timings per model (default 5).")
    parser.add_argument("--speed-only", action="store_true", help="Only the speed comparison.")
    parser.add_argument("--no-speed", action="store_true", help="Skip the speed comparison.")
    return parser.parse_args(argv)


def data_sets(args):
    if args.data_path:
        return ["--set", "data.source=npz", "--set", f"data.path={os.path.abspath(args.data_path)}"]
    return ["--set", "data.source=mnist"]


def run(command, log_path):
    """Run a project script from the repository root, its output into log_path; exits on failure."""
    with open(log_path, "a", encoding="utf-8") as log:
        status = subprocess.run([sys.executable, *command], cwd=ROOT, stdout=log, stderr=subprocess.STDOUT).returncode
    if status:
        sys.exit(f"error: {' '.join(command[:3])} ... exited with status {status}; see {log_path}.")


def summary_of(run_dir):
    try:
        with open(os.path.join(run_dir, "summary.json"), encoding="utf-8") as handle:
            return json.load(handle)
    except (OSError, ValueError):
        return {}


def train_and_evaluate(args, seed):
    """The seed's finished run folder, trained (or resumed) and evaluated at k = --iwae-k on every test digit."""
    name = f"{args.variant}_seed{seed}"
    run_dir, log = os.path.join(args.output_dir, name), os.path.join(args.output_dir, f"{name}.log")
    os.makedirs(args.output_dir, exist_ok=True)
    if summary_of(run_dir).get("status") != "complete":
        print(f"training {name} (log: {log}) ...", flush=True)
        run(["train.py", "--config", os.path.join("recipes", RECIPES[args.variant]), *data_sets(args),
             "--set", f"train.seed={seed}", "--set", f"output.dir={args.output_dir}",
             "--set", f"output.run_name={name}"], log)
    validation = summary_of(run_dir).get("validation") or {}
    if validation.get("iwae_k") != args.iwae_k or validation.get("examples") != validation.get("available_examples"):
        print(f"evaluating {name} with k = {args.iwae_k} ...", flush=True)
        run(["evaluate.py", "--run", run_dir, "--iwae-k", str(args.iwae_k), "--digits", "1000000000",
             "--max-minutes", str(args.max_minutes)], log)
    return summary_of(run_dir)


def mean_se(values):
    """'m ± s.e.' over seeds ('m' for one)."""
    if len(values) == 1:
        return f"{values[0]:.2f}"
    return f"{statistics.mean(values):.2f} ± {statistics.stdev(values) / math.sqrt(len(values)):.2f}"


def results_table(args, summaries):
    """The comparison as a markdown table, one row per quantity."""
    v = [s["validation"] for s in summaries]
    phases = [s["timing"]["phases_seconds"] for s in summaries]
    nll = [x["iwae_nll_nats"] for x in v]
    rows = [(f"test NLL, IWAE bound (nats; paper k = {PAPER['k']:,}, ours k = {v[0]['iwae_k']:,})",
             f"{PAPER['nll_nats']:.2f}", mean_se(nll)),
            ("gap to the paper (nats)", "", mean_se([value - PAPER["nll_nats"] for value in nll])),
            ("−ELBO (nats)", "", mean_se([x["neg_elbo_nats"] for x in v])),
            ("KL (nats)", "", mean_se([x["kl_nats"] for x in v])),
            ("active units (Cov_x E_q[u|x] > 0.01)", str(PAPER["active_units"]),
             mean_se([x["active_units"] for x in v])),
            ("wall time, training (h)", "", mean_se([(p["gradient_steps"] + p["validation"] + p["between_epochs"])
                                                     / 3600 for p in phases])),
            ("training digits per second", "", mean_se([s["timing"]["digits_per_second"] for s in summaries]))]
    seeds = ", ".join(str(s.get("seed", "?")) for s in summaries)
    lines = [f"| {args.variant} schedule, {len(summaries)} seed(s) | Burda et al. (2016), Table 1 | ours ({seeds}) |",
             "|---|---|---|", *(f"| {name} | {paper} | {ours} |" for name, paper, ours in rows)]
    per_seed = "; ".join(f"{x['iwae_nll_nats']:.2f}" for x in v)
    return "\n".join([*lines, "", f"Per seed, test NLL: {per_seed} (k = {v[0]['iwae_k']}, {v[0]['examples']} digits)."])


def plain_mlp_vae(latent_dim=50, hidden=200):
    """The obvious Keras MLP VAE of the paper's size: Functional encoder and decoder, the tutorial's Sampling
    layer, and a train_step with the summed BCE from logits and the KL, Adam (β₁ 0.9, β₂ 0.999, ε 1e-4) at 1e-3."""
    import keras
    import tensorflow as tf
    from keras import layers, ops

    inputs = keras.Input(shape=(28, 28, 1))
    h = layers.Dense(hidden, activation="tanh")(layers.Dense(hidden, activation="tanh")(layers.Flatten()(inputs)))
    z_mean, z_log_var = layers.Dense(latent_dim)(h), layers.Dense(latent_dim)(h)
    encoder = keras.Model(inputs, [z_mean, z_log_var, sampling_layer()([z_mean, z_log_var])])
    latent = keras.Input(shape=(latent_dim,))
    h = layers.Dense(hidden, activation="tanh")(layers.Dense(hidden, activation="tanh")(latent))
    decoder = keras.Model(latent, layers.Reshape((28, 28, 1))(layers.Dense(784)(h)))

    class PlainVAE(keras.Model):
        def __init__(self, encoder, decoder, **kwargs):
            super().__init__(**kwargs)
            self.encoder, self.decoder = encoder, decoder

        def train_step(self, data):
            with tf.GradientTape() as tape:
                z_mean, z_log_var, z = self.encoder(data)
                logits = self.decoder(z)
                bce = ops.sum(ops.binary_crossentropy(data, logits, from_logits=True), axis=(1, 2, 3))
                kl = -0.5 * ops.sum(1 + z_log_var - ops.square(z_mean) - ops.exp(z_log_var), axis=1)
                loss = ops.mean(bce + kl)
            grads = tape.gradient(loss, self.trainable_weights)
            self.optimizer.apply_gradients(zip(grads, self.trainable_weights))
            return {"loss": loss}

    vae = PlainVAE(encoder, decoder)
    vae.compile(optimizer=keras.optimizers.Adam(1e-3, beta_1=0.9, beta_2=0.999, epsilon=1e-4))
    return vae


def our_mlp_vae(variant):
    """This trainer's VAE of the recipe, built and compiled as train.py does (build_vae and its Setup)."""
    cfg, _ = config.load(os.path.join(ROOT, "recipes", RECIPES[variant]), ["data.source=mnist_embedded"])
    setup = session.prepare(cfg, sources.load_digits(cfg.data, cfg.train.seed))
    return train.build_vae(setup)


def timed_fit(model, x, steps):
    """Seconds of `steps` gradient steps of batch 20 on x (a numpy array, the first fit call traces)."""
    started = time.perf_counter()
    model.fit(x[: 20 * steps], batch_size=20, epochs=1, verbose=0, shuffle=False)
    return time.perf_counter() - started


def speed(args):
    """(plain ms/step, ours ms/step): medians of --repeats alternating timings after one untimed warm-up each."""
    rng = np.random.default_rng(0)
    x = (rng.random((20 * args.speed_steps, 28, 28, 1)) < 0.13).astype("float32")  # MNIST's share of ink.
    models = {"plain": plain_mlp_vae(), "ours": our_mlp_vae(args.variant)}
    times = {name: [] for name in models}
    for model in models.values():
        timed_fit(model, x, min(50, args.speed_steps))  # Tracing.
    for _ in range(args.repeats):
        for name, model in models.items():
            times[name].append(timed_fit(model, x, args.speed_steps) * 1000 / args.speed_steps)
    return statistics.median(times["plain"]), statistics.median(times["ours"])


def main(argv=None):
    args = parse_args(argv)
    print(f"CPU: {cpu_name()}, {os.cpu_count()} cores; "
          f"Python {platform.python_version()}")
    if not args.speed_only:
        seeds = args.seeds or (3 if args.variant == "short" else 1)
        summaries = [{**train_and_evaluate(args, seed), "seed": seed} for seed in range(1337, 1337 + seeds)]
        print(results_table(args, summaries))
    if not args.no_speed:
        plain, ours = speed(args)
        print(f"\nTraining speed, batch 20, median of {args.repeats} × {args.speed_steps} steps: plain Keras MLP VAE "
              f"{plain:.2f} ms/step, this trainer {ours:.2f} ms/step")
        print(f"speed_ratio={plain / ours:.2f}")


if __name__ == "__main__":
    main()

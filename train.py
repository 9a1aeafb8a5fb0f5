"""Train the keras.io convolutional VAE with the KL weighting you configure, and say what it did.

    python train.py --config config.yaml [--set loss.reconstruction_reduction=mean ...] [--explain]

Prints the objective as a multiple of the ELBO (the effective β), trains, and writes into outputs/<run>/:
config.yaml, metrics.csv, model.keras, summary.json, report.html and the figures. --explain prints what
the config optimises and stops. The steps are the keras.io example's: the data, the VAE, compile, fit;
then the evaluation at β = 1 and the report. From Python (a notebook cell):
`summary = train.run("config.yaml", overrides=["train.epochs=5"])`.
"""

import argparse
import os
import sys
import time

from vae_kl.data import batches, sources
from vae_kl.process import atomic, exits, signals
from vae_kl.spec import config, plan
from vae_kl.training import session

# TensorFlow (keras, model, the callbacks and the reports) is imported only inside the functions that train:
# `--help`, `--explain` and every check of the input answer before that import (about 4 s).
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")  # Keep TensorFlow's start-up chatter out of the way.


def train(cfg, callbacks=(), quiet_console=False):
    """Train one configured run end to end. Returns (exit status, run folder).

    quiet_console: import TensorFlow with its C++ start-up lines kept out of the console and written
    into <run>/tensorflow_startup.log (vae_kl/process/quiet.py), as the command line and train.run do.
    """
    started = time.perf_counter()
    session.check_before_tensorflow(cfg)  # Every check of the input that needs no TensorFlow, first.
    if quiet_console:
        from vae_kl.process import quiet  # TensorFlow from here on (see above).

        quiet.import_tensorflow()
    from vae_kl.reports import run_page

    setup = session.prepare(cfg, sources.load_digits(cfg.data, cfg.train.seed))  # The data; the run on this machine.
    run = session.RunFolder(setup)  # A new folder, or the unfinished one this command resumes.
    session.announce(setup, run.where)
    vae = build_vae(setup)
    with run.held(vae, quiet_console) as history:  # The folder, locked; a Ctrl-C or a full disk is recorded.
        phases = {"startup": time.perf_counter() - started}
        recorder, clock = fit(setup, vae, run.dir, history, callbacks, run.tracker)
        if recorder.diverged_at:
            return run.diverged(recorder.diverged_at, history), run.dir
        phases.update(clock.totals())
        evaluation_started = time.perf_counter()
        vae = session.in_float32(setup, vae, build_vae)
        session.save_model(run.dir, vae)  # model.keras
        results = session.evaluate(setup, vae, run.dir, history)  # The β = 1 numbers, the verdict, the figures.
        phases["evaluation"] = time.perf_counter() - evaluation_started
        run_page.publish(run.dir, session.complete(setup, vae, run.dir, history, results, phases))
    return run.status, run.dir


def build_vae(setup, precision=None):
    """The configured VAE, compiled with the run's optimizer, objective and batch slices: the tutorial's
    `VAE(encoder, decoder)` and `compile`, from the config. precision: train.precision by default."""
    import model  # TensorFlow: see above.

    cfg = setup.cfg
    setup.seed()  # The weights, the data order and the noise follow train.seed.
    with setup.scope():  # Under tf.distribute every variable is made in the strategy's scope.
        vae = model.build_vae(cfg.model, cfg.loss, cfg.train.seed, setup.image_shape, precision or cfg.train.precision)
        vae.compile(optimizer=setup.optimizer(precision), objective=setup.objective, batch_shards=setup.batch_shards,
                    steps_per_execution=setup.steps_per_execution)
        if setup.strategy:
            vae.optimizer.build(vae.trainable_variables)
    return vae


def fit(setup, vae, run_dir, history, callbacks=(), tracker=None):
    """The tutorial's `vae.fit`, from the first epoch the run has not finished, with the run's callbacks (metrics.csv,
    the grids, the checkpoint, TensorBoard, MLflow when tracker is given); returns the recorder (it knows whether
    training diverged) and the phase clock (where the epochs' time went)."""
    from vae_kl.training.callbacks import run_callbacks  # TensorFlow: see above.

    cfg, first_epoch = setup.cfg, len(history)
    recorder, clock, run_list = run_callbacks(setup, vae, run_dir, history, tracker)
    if first_epoch < cfg.train.epochs:
        vae.fit(batches.train_batches(setup.digits.x_train, cfg.train.batch_size, cfg.train.seed, first_epoch,
                                      cfg.train.epochs, cfg.data.binarize == "dynamic"),
                epochs=cfg.train.epochs, initial_epoch=first_epoch, steps_per_epoch=setup.steps_per_epoch,
                validation_data=batches.validation_batches(setup.digits.x_val), callbacks=[*run_list, *callbacks],
                shuffle=False, verbose=1 if sys.stdout.isatty() else 2)
    return recorder, clock


def run(config_or_path=None, overrides=(), callbacks=()):
    """Train one configured run from Python and return its summary.json as a dict, with "run_dir" added: its folder.

    Args:
        config_or_path: a YAML file's path, a config.Config, a dict shaped like config.yaml, or None
            for the tutorial's defaults.
        overrides: `section.key=value` strings, as `--set` takes them.
        callbacks: extra keras.callbacks.Callback objects for `fit`.
    Raises config.ConfigError, arrays.DataError or folders.RunFolderError (all exits.UserError) on bad input; a
    diverged or interrupted run returns its summary with that status.
    """
    overrides = session.check_list("overrides", overrides, str, "'section.key=value' strings")
    cfg, _ = session.load_config(config_or_path, overrides)
    callbacks = session.check_list("callbacks", callbacks, None, "keras.callbacks.Callback objects")
    for callback in callbacks:
        if not callable(getattr(callback, "set_model", None)):
            raise config.ConfigError(f"callbacks must hold keras.callbacks.Callback objects, received a "
                                     f"{type(callback).__name__}.")
    _, run_dir = train(cfg, callbacks, quiet_console=True)  # A notebook shows no C++ start-up lines either.
    return {**atomic.read_json(os.path.join(run_dir, "summary.json")), "run_dir": run_dir}


EPILOG = """examples:
  python train.py --config config.yaml
  python train.py --config config.yaml --set loss.reconstruction_reduction=mean
  python train.py --config recipes/keras_io_2020.yaml --explain
  python train.py --config config.yaml --set loss.kl_weight=4 --set train.epochs=10

Every setting is a key of config.yaml, which documents each one (--set section.key=value overrides it):
{keys}

Exit status: 0 done, 2 bad input, 3 diverged, 4 an environment fault (a full disk; resumable), 130 interrupted.
Results: outputs/<run>/report.html; see README.md."""


def parse_args(argv):
    parser = exits.ArgumentParser(description=__doc__.split("\n\n")[0], epilog=EPILOG.format(keys=config.keys_text()),
                                  formatter_class=argparse.RawDescriptionHelpFormatter, hint=config.flag_hint)
    parser.add_argument("--config", default=None, help="YAML config file, e.g. config.yaml or one of recipes/ "
                                                       "(default: the built-in tutorial defaults).")
    parser.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                        help="Override one setting, e.g. --set loss.kl_weight=0.1 (repeatable).")
    parser.add_argument("--explain", action="store_true",
                        help="Print what this config optimises (formula, effective β, β_norm, warnings, what to "
                             "expect) and exit without training or loading TensorFlow.")
    return parser.parse_args(argv)


def explain(args):
    """--explain: print the plan of the configured run, from the config and the data's shape alone."""
    cfg, notes = session.load_config(args.config, args.overrides)
    shape = session.check_before_tensorflow(cfg)
    command = " ".join(["python train.py", *([f"--config {args.config}"] if args.config else []),
                        *(f"--set {text}" for text in args.overrides)])
    for line in notes + plan.explain(plan.Plan.from_config(cfg, shape.image_shape, shape.train_examples), shape,
                                     command):
        print(line)


def main(argv=None, as_process=False):
    """The command line; as_process (the script itself): Ctrl-C, SIGTERM or the death of the sweep that started
    it stop training resumably."""
    def action():
        args = parse_args(argv)
        if args.explain:
            return explain(args)
        if as_process:
            signals.stop_like_ctrl_c()
        cfg, notes = session.load_config(args.config, args.overrides)
        for note in notes:
            print(note)
        return train(cfg, quiet_console=True)[0]

    return exits.guard(action)


if __name__ == "__main__":
    exits.exit_now(main(as_process=True))

"""Evaluate a trained VAE again: the true ELBO, the IWAE bound, how much the code is used, a verdict, figures.

    python evaluate.py --run outputs/<run> [--iwae-k K] [--digits N] [--max-minutes M]

Whatever the training objective was, the numbers are for β = 1 under the model's own prior: the
negative ELBO = E_q[-log p(x|z)] + KL(q(z|x) || p(z)), in nats per digit, and the importance-weighted
bound of Burda et al. (2016), which is tighter. How much the code is used is measured by information,
which does not depend on the scale of z (vae_kl/evaluation/). train.py evaluates every run at its end;
this command does it again from the saved model.keras, with as many importance samples as you ask for,
and rewrites summary.json, the figures and report.html. It says first how long it will take (timed on one
decoder call) and refuses an evaluation longer than --max-minutes; Ctrl-C stops it with the run unchanged.
"""

import math
import os
import sys

from vae_kl.process import exits
from vae_kl.runs import saved
from vae_kl.spec import config

MAX_IWAE_K = 100_000
MAX_MINUTES = 60  # --max-minutes' default: a longer evaluation is refused, saying how to shorten or allow it.


def parse_args(argv=None):
    parser = exits.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="A run folder written by train.py.")
    parser.add_argument("--iwae-k", default=None, help=f"Importance samples, 1 to {MAX_IWAE_K} (default: the run's).")
    parser.add_argument("--digits", default=None, help="Evaluate the first N validation digits only (default: the "
                                                       "run's evaluation.max_examples, else all).")
    parser.add_argument("--max-minutes", default=str(MAX_MINUTES),
                        help=f"Refuse an evaluation estimated to take longer (default {MAX_MINUTES}).")
    return parser.parse_args(argv)


def number_argument(flag, text, kind, low, high):
    """A number from low to high for a flag, or a ConfigError saying what was expected."""
    try:
        value = kind(text)
    except ValueError:
        value = None
    if value is None or not low <= value <= high:
        raise config.ConfigError(f"{flag} expects {'an integer' if kind is int else 'a number'} from {low:g} to "
                                 f"{high:g}, received {text[:40]!r}.")
    return value


def check_arguments(args):
    """(run folder, iwae_k, digits, max minutes) from the command line, checked before TensorFlow loads."""
    iwae_k = None if args.iwae_k is None else number_argument("--iwae-k", args.iwae_k, int, 1, MAX_IWAE_K)
    digits = None if args.digits is None else number_argument("--digits", args.digits, int, 1, 10**9)
    limit = number_argument("--max-minutes", args.max_minutes, float, 0.01, 10**6)
    saved.check_run_folder(args.run)
    return args.run, iwae_k, digits, limit


def reevaluate(run_dir, iwae_k=None, count=None, limit_minutes=MAX_MINUTES):
    """Reload a finished run's model and data, recompute its numbers and figures on its first `count` validation
    digits (None: the config's evaluation.max_examples, else all), update summary.json, rewrite report.html and
    print the same short block as train.py; refuse (EvaluationTooLong) one estimated above limit_minutes."""
    # TensorFlow loads only now, after every check of the arguments (it takes seconds), its start-up lines quiet.
    from vae_kl.process import quiet

    quiet.import_tensorflow()
    import model
    from vae_kl.data import sources
    from vae_kl.evaluation import clock
    from vae_kl.reports import run_figures, run_page
    from vae_kl.runs import folders, records

    summary, cfg, vae = saved.load_run(run_dir, model.VAE)
    digits = sources.load_digits(cfg.data, cfg.train.seed)
    if digits.x_val.shape[1:] != vae.image_shape:
        raise folders.RunFolderError(f"{run_dir}'s model takes images of shape {vae.image_shape}, but its dataset "
                                     f"{summary['dataset']} has {digits.x_val.shape[1:]}.")
    history = records.read_csv_rows(os.path.join(run_dir, "metrics.csv"))
    epochs = summary.get("epochs_completed") if isinstance(summary.get("epochs_completed"), int) else len(history)
    steps = epochs * math.ceil(len(digits.x_train) / cfg.train.batch_size)
    k, digits_wanted = iwae_k or cfg.evaluation.iwae_k, count or cfg.evaluation.max_examples
    evaluated = min(len(digits.x_val), digits_wanted or len(digits.x_val))
    timer = clock.Clock(evaluated, k, limit_minutes, "evaluate fewer digits (--digits) or fewer samples (--iwae-k), "
                                                     "or allow more time with --max-minutes")
    validation, verdict = run_figures.evaluate_run(vae, run_dir, digits.x_val, digits.y_val, k, digits_wanted,
                                                   history, steps, timer)
    run_page.publish(run_dir, records.update_summary(run_dir, validation=validation, collapse=verdict))


def main(argv=None):
    return exits.guard(lambda: reevaluate(*check_arguments(parse_args(argv))))


if __name__ == "__main__":
    sys.exit(main())

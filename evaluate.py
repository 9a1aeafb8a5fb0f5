"""Evaluate a trained VAE again: the true ELBO, the IWAE bound, how much the code is used, a verdict, figures.

    python evaluate.py --run outputs/<run> [--iwae-k K]

Whatever the training objective was, the numbers are for β = 1 under the model's own prior: the
negative ELBO = E_q[-log p(x|z)] + KL(q(z|x) || p(z)), in nats per digit, and the importance-weighted
bound of Burda et al. (2016), which is tighter. How much the code is used is measured by information,
which does not depend on the scale of z (vae_kl/evaluation/). train.py evaluates every run at its end;
this command does it again from the saved model.keras, with as many importance samples as you ask for,
and rewrites summary.json, the figures and report.html.
"""

import math
import os
import sys

from vae_kl.process import exits
from vae_kl.runs import saved
from vae_kl.spec import config

MAX_IWAE_K = 100_000


def parse_args(argv=None):
    parser = exits.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--run", required=True, help="A run folder written by train.py.")
    parser.add_argument("--iwae-k", default=None, help=f"Importance samples, 1 to {MAX_IWAE_K} (default: the run's).")
    return parser.parse_args(argv)


def iwae_k_argument(text):
    """--iwae-k: an integer from 1 to MAX_IWAE_K."""
    try:
        value = int(text)
    except ValueError:
        raise config.ConfigError(f"--iwae-k expects an integer from 1 to {MAX_IWAE_K}, received {text[:40]!r}.")
    if not 1 <= value <= MAX_IWAE_K:
        raise config.ConfigError(f"--iwae-k must be from 1 to {MAX_IWAE_K}, received {value}.")
    return value


def check_arguments(args):
    """(run folder, iwae_k or None) from the command line, every check made before TensorFlow loads."""
    iwae_k = None if args.iwae_k is None else iwae_k_argument(args.iwae_k)
    saved.check_run_folder(args.run)
    return args.run, iwae_k


def reevaluate(run_dir, iwae_k=None):
    """Reload a finished run's model and data, recompute its numbers and figures, update summary.json, rewrite
    report.html and print the same short block as train.py."""
    # TensorFlow loads only now, after every check of the arguments (it takes seconds), its start-up lines quiet.
    from vae_kl.process import quiet

    quiet.import_tensorflow()
    import model
    from vae_kl.data import sources
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
    validation, verdict = run_figures.evaluate_run(vae, run_dir, digits.x_val, digits.y_val,
                                                   iwae_k or cfg.evaluation.iwae_k, cfg.evaluation.max_examples,
                                                   history, steps)
    run_page.publish(run_dir, records.update_summary(run_dir, validation=validation, collapse=verdict))


def main(argv=None):
    return exits.guard(lambda: reevaluate(*check_arguments(parse_args(argv))))


if __name__ == "__main__":
    sys.exit(main())

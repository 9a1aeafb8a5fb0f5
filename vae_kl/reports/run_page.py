"""One run's result at a glance: a short console block and a self-contained <run>/report.html.

train.py (at the end of a run) and evaluate.py --run (after re-evaluating) call `publish`: it
writes report.html from summary.json and the run's PNG figures, then prints the block. Both read
only summary.json, so the long reasoning stays there (collapse.reason) and the page and the
console cannot disagree with it. No TensorFlow here: a page can be rebuilt from a finished folder.
"""

import html
import math
import os
import sys
from typing import Any, Optional

from vae_kl.evaluation import noise
from vae_kl.process import atomic, exits
from vae_kl.reports.sweep_page import collapse_state, data_uri, html_table
from vae_kl.runs import folders

PAGE = "report.html"
# The figures a run draws, in reading order, each with one line on what it shows. A PNG missing from a
# run (latent_space.png needs latent_dim 2) is skipped; one not listed here is shown after these.
FIGURES = (
    ("reconstructions.png", "One validation digit of each class (top row) and its reconstruction from the "
                            "posterior mean (bottom row)."),
    ("latent_space.png", "Digits decoded across the 2-D latent space, over the 1st to 99th percentiles of the "
                         "codes and the prior."),
    ("latent_clusters.png", "Posterior means of the validation digits, coloured by digit (the two most "
                            "informative units when there are more)."),
    ("loss_curves.png", "The training objective and its reconstruction and KL terms per epoch, training and "
                        "validation."),
    ("information.png", "The information the code carries per epoch, in total and per latent unit, on the first "
                        "validation digits: where the code collapsed or recovered."),
    ("kl_schedule.png", "The KL weight at every gradient step, with its value at the end of each epoch."),
    ("kl_per_dim.png", "KL and information I(x; z_j) of each latent unit; informative units in colour."),
    ("rate_distortion.png", "The run's path per epoch in the plane of rate (KL) and distortion (reconstruction), "
                            "on the validation digits."),
    ("samples.png", "Digits decoded from samples of the prior: what the model generates."),
)
# validation.* keys in the order and words of the page's table; keys not named here follow under their own name.
VALIDATION_LABELS = (
    ("examples", "Validation digits evaluated"), ("available_examples", "Validation digits the data holds"),
    ("neg_elbo_nats", "−ELBO (nats per digit, β = 1)"), ("neg_elbo_bits_per_dim", "−ELBO (bits per pixel value)"),
    ("reconstruction_nats", "Reconstruction E_q[−log p(x|z)] (nats)"), ("kl_nats", "KL(q(z|x) ‖ p(z)) (nats)"),
    ("kl_estimator", "KL computed by"), ("kl_per_dim_nats", "KL per latent unit (nats)"),
    ("iwae_nll_nats", "IWAE bound on −log p(x) (nats)"),
    ("iwae_nll_bits_per_dim", "IWAE bound (bits per pixel value)"),
    ("iwae_k", "IWAE importance samples k"), ("mutual_information_nats", "Information I(x; z) (nats)"),
    ("mutual_information_se_nats", "Standard error of I(x; z) over the noise draws (nats)"),
    ("information_draws", "Noise draws averaged in the information estimates"),
    ("mutual_information_cap_nats", "Most I(x; z) this estimate can show, log N (nats)"),
    ("mutual_information_examples", "Digits N in the I(x; z) estimate"),
    ("information_per_unit_nats", "Information per unit I(x; z_j) (nats)"),
    ("information_per_unit_se_nats", "Standard error of I(x; z_j) per unit (nats)"),
    ("informative_units", "Informative units"), ("latent_dim", "Latent units"),
    ("signal_to_noise_per_unit", "Signal-to-noise ratio per unit"),
    ("marginal_kl_nats", "KL − I(x; z): the codes' distribution against the prior (nats)"),
    ("total_correlation_nats", "Total correlation KL(q(z) ‖ Π q(z_j)) (nats)"),
    ("total_correlation_se_nats", "Standard error of the total correlation (nats)"),
    ("dimension_wise_kl_nats", "Dimension-wise KL Σ_j KL(q(z_j) ‖ p(z_j)) (nats)"),
    ("active_units", "Active units (Burda et al.; depends on the scale of z)"),
    ("posterior_mean_variance", "Variance of the posterior means per unit"),
    ("reconstruction_spread", "Spread of the reconstructions (their variance over the inputs')"),
    ("decoder_use_nats", "Reconstruction a digit's own code saves over another digit's (nats)"),
    ("decoder_use_se_nats", "Standard error of that saving (nats)"),
    ("gaussian_sigma", "Gaussian σ used in the evaluation"), ("prior", "Prior"),
)
STYLE = ("body{font-family:sans-serif;margin:1em auto;padding:0 1em;max-width:1200px;box-sizing:border-box;"
         "line-height:1.4}"
         "table{border-collapse:collapse;font-size:13px;width:100%;margin-bottom:1em}"
         "td,th{border:1px solid #ccc;padding:3px 6px;vertical-align:top;text-align:left;overflow-wrap:anywhere}"
         "th{background:#f2f2f2}th.name{width:16em;font-weight:normal}td code{font-size:11px;color:#555}"
         "tr>td:first-child{width:35%}figure{margin:1.5em 0}figcaption{color:#333;font-size:14px}"
         # Wider figures shrink to the page, and a tall one to a screen's height, so nothing scrolls sideways.
         "img{max-width:100%;max-height:900px;height:auto;width:auto}"
         "code{overflow-wrap:anywhere}.verdict{padding:.5em 1em;border-left:6px solid #888;background:#f7f7f7}"
         ".healthy{color:#080}.partial{color:#a60}.collapsed{color:#b00}.state{font-weight:bold}"
         ".warning{color:#a60}")


# ---- Words from summary.json ---------------------------------------------------------------------------

def short(value: Any) -> str:
    """A number of nats for the console: one decimal from 1 up, two significant digits below, 0 for ~0."""
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not math.isfinite(value):
        return "?"
    if abs(value) < 5e-4:
        return "0"  # Estimates that round to zero, without a minus sign.
    return f"{value:.1f}" if abs(value) >= 0.95 else f"{value:.2g}"


def units_text(count: int) -> str:
    """"1 latent unit", "8 latent units"."""
    return f"{count} latent unit{'' if count == 1 else 's'}"


def part(summary: dict, key: str) -> dict:
    """summary[key] when it is a dict, else {}: a summary written by an older version, or by hand, may lack it."""
    value = summary.get(key)
    return value if isinstance(value, dict) else {}


def state_sentence(state: Optional[str], informative: Optional[int], latent_dim: Optional[int],
                   decoder_ignores: bool = False) -> str:
    """The verdict in capitals and one plain sentence made from the unit counts (the reasoning with all its
    numbers is summary.json's collapse.reason, shown on the page); decoder_ignores: collapse.decoder_ignores_code."""
    if state is None:
        return "No verdict: summary.json has none."
    counted = isinstance(informative, int) and isinstance(latent_dim, int)
    if state == "collapsed" and decoder_ignores:
        return "COLLAPSED: the code carries information about the digit, but the decoder ignores it."
    if state == "collapsed":
        return "COLLAPSED: the code tells the decoder almost nothing about the digit."
    if state == "partial" and counted and informative == 0:  # Information spread thinly over many units.
        return "PARTIAL: no single latent unit carries much information on its own."
    if state == "partial" and counted:
        rest = latent_dim - informative
        return (f"PARTIAL: only {informative} of {units_text(latent_dim)} {'carries' if informative == 1 else 'carry'}"
                f" information; {'the other carries' if rest == 1 else f'the other {rest} carry'} almost none.")
    if state == "healthy" and counted:
        every = {1: "the one latent unit carries", 2: "both latent units carry"}.get(
            latent_dim, f"all {latent_dim} latent units carry")
        return f"HEALTHY: {every} information."
    return f"{state.upper()}."


def verdict_of(summary: dict) -> tuple[Optional[str], str, Optional[str]]:
    """(state or None, its sentence, advice or None) from a summary's collapse verdict."""
    collapse, validation = part(summary, "collapse"), part(summary, "validation")
    state = collapse_state(collapse) if collapse else None  # Older summaries have only `detected`.
    informative = collapse.get("informative_units", validation.get("informative_units"))
    latent_dim = validation.get("latent_dim", part(summary, "objective").get("latent_dim"))
    return state, state_sentence(state, informative, latent_dim, collapse.get("decoder_ignores_code") is True), \
        collapse.get("advice")


def heading(summary: dict, validation: dict) -> str:
    """The block's first line: how many digits, and that the numbers are β = 1 whatever the training β was."""
    beta = part(summary, "objective").get("effective_beta")
    trained = "" if not isinstance(beta, (int, float)) or math.isclose(beta, 1.0) else \
        f"; trained with effective β = {beta:g}"
    return f"Result on {digits_text(validation)} validation digits (β = 1, the true ELBO{trained}):"


def digits_text(validation: dict) -> str:
    """'1000', or '5 of 1000' when the evaluation took only the first digits (evaluate.py --digits)."""
    examples, available = validation.get("examples", "?"), validation.get("available_examples")
    return f"{examples} of {available}" if isinstance(available, int) and available != examples else f"{examples}"


def number_lines(validation: dict) -> list[str]:
    """The numbers at a glance: −ELBO = reconstruction + KL (and the IWAE bound), then the information."""
    if "neg_elbo_nats" not in validation:
        return ["No validation numbers in summary.json."]
    iwae = (f"; IWAE bound (k = {validation['iwae_k']}) {short(validation['iwae_nll_nats'])}"
            if "iwae_nll_nats" in validation and "iwae_k" in validation else "")
    lines = [f"−ELBO {short(validation['neg_elbo_nats'])} nats per digit = reconstruction "
             f"{short(validation.get('reconstruction_nats'))} + KL {short(validation.get('kl_nats'))}{iwae}"]
    if "mutual_information_nats" in validation:
        cap = validation.get("mutual_information_cap_nats")
        limit = f"; at most {short(cap)} can be shown here" if cap is not None else ""
        lines.append(f"The code carries {short(validation['mutual_information_nats'])} nats of information about "
                     f"each digit (I(x; z){limit}).")
    return lines


def console_lines(summary: dict, run_dir: str, page: Optional[str] = None) -> list[str]:
    """The short block that ends a run's console: the numbers, the verdict in one sentence, the advice, and
    where the figures are. page: report.html's path, or None when it could not be written."""
    validation = part(summary, "validation")
    _, sentence, advice = verdict_of(summary)
    lines = [heading(summary, validation)] + [f"  {line}" for line in number_lines(validation)]
    geco = summary.get("geco") if isinstance(summary.get("geco"), dict) else None
    if geco and isinstance(geco.get("final_beta"), (int, float)):
        lines.append(f"  GECO ended at β = {geco['final_beta']:.4g} (loss.kl_weight {geco['final_kl_weight']:.4g}) for "
                     f"κ = {geco['target_distortion']:g}: the last epoch's training reconstruction was "
                     f"{value_text(geco['training_reconstruction_nats'])} nats" +
                     (f"; {geco['note']}." if geco.get("note") else "."))
    rate = summary.get("capacity") if isinstance(summary.get("capacity"), dict) else None
    if rate and isinstance(rate.get("validation_kl_nats"), (int, float)):
        lines.append(f"  Capacity: KL {value_text(rate['validation_kl_nats'])} nats on the validation digits for a "
                     f"target of C = {rate['target_rate']:g}" + (f"; {rate['note']}." if rate.get("note") else "."))
    if "tc_weight" in part(summary, "objective") and "total_correlation_nats" in validation:
        lines.append(f"  The KL in three parts (Chen et al. 2018): information "
                     f"{short(validation['mutual_information_nats'])} + total correlation "
                     f"{short(validation['total_correlation_nats'])} + dimension-wise KL "
                     f"{short(validation.get('dimension_wise_kl_nats'))} nats.")
    lines.append(f"  {sentence}")
    if advice:
        lines.append(f"  Advice: {advice}")
    lines.append(f"  Figures: {page} (and the PNGs beside it)" if page else f"  Figures: the PNGs in {run_dir}")
    return lines


# ---- report.html ---------------------------------------------------------------------------------------

def value_text(value: Any) -> str:
    """A summary.json value as table text: 4 significant digits (2 decimals from 100 up), lists and dicts flattened."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:,.2f}" if abs(value) >= 100 else f"{value:.4g}"  # −ELBO 202.68, not 202.7 beside 200
    if isinstance(value, (list, tuple)):
        return ", ".join(value_text(item) for item in value)
    if isinstance(value, dict):
        return ", ".join(f"{key}: {value_text(item)}" for key, item in value.items())
    return "" if value is None else str(value)


def estimate_value_text(validation: dict, key: str) -> str:
    """value_text, except that an estimate whose standard error summary.json records (key_se_nats beside key_nats)
    and which lies within its noise of 0 says so (noise.estimate_text), per unit for lists."""
    value, se = validation[key], validation.get(key.replace("_nats", "_se_nats")) if key.endswith("_nats") else None
    if isinstance(value, (int, float)) and not isinstance(value, bool) and noise.within_noise(value, se):
        return noise.estimate_text(value, se)
    if isinstance(value, list) and isinstance(se, list) and len(se) == len(value):
        return ", ".join(noise.estimate_text(v, e) if noise.within_noise(v, e) else value_text(v)
                         for v, e in zip(value, se))
    return value_text(value)


def pairs_table(rows: list[tuple[str, Any]]) -> str:
    """(name, value) pairs as a two-column table with the names as row headers, dropping unknown values."""
    body = "".join(f'<tr><th class="name">{html.escape(name)}</th><td>{html.escape(value_text(value))}</td></tr>'
                   for name, value in rows if value is not None)
    return f"<table>{body}</table>"


def validation_table(validation: dict) -> str:
    """Every validation.* number, named in words, with its summary.json key beside it."""
    labels = dict(VALIDATION_LABELS)
    keys = [key for key, _ in VALIDATION_LABELS if key in validation] + \
        [key for key in validation if key not in labels]
    if not keys:
        return "<p>No validation numbers in summary.json.</p>"
    rows = [(labels.get(key, key), estimate_value_text(validation, key), f"validation.{key}") for key in keys]
    return html_table(rows, [("Quantity", lambda r: r[0]), ("Value", lambda r: r[1]), ("summary.json", lambda r: r[2])],
                      {"summary.json": lambda r: f"<code>{html.escape(r[2])}</code>"})


def objective_html(summary: dict) -> str:
    """The training objective: its formula and meaning, the effective β and β_norm, likelihood and prior."""
    described = part(summary, "objective")
    if not described:
        return "<h2>Objective</h2><p>summary.json does not describe the objective.</p>"
    rows = [("Formula", described.get("formula")), ("Meaning", described.get("meaning")),
            ("Effective β", described.get("effective_beta")), ("β_norm = β·J/D", described.get("beta_norm")),
            ("λ (loss.kl_weight)", described.get("kl_weight")),
            ("MSE-sum equivalent β", described.get("sse_equivalent_beta")),
            ("Likelihood", described.get("likelihood")), ("Prior", described.get("prior"))]
    return "<h2>Objective</h2>" + pairs_table(rows)


def data_html(summary: dict) -> str:
    """The dataset, its sizes, the digits evaluated and the epochs trained."""
    validation = part(summary, "validation")
    described = part(summary, "objective")
    rows = [("Dataset", summary.get("dataset")), ("Training digits", summary.get("train_examples")),
            ("Validation digits", summary.get("validation_examples")),
            ("Evaluated on", digits_text(validation) if validation else None),
            ("Pixel values per image D", described.get("num_pixels")), ("Latent units J", described.get("latent_dim")),
            ("Epochs", f"{summary.get('epochs_completed', '?')} of {summary.get('epochs_planned', '?')}"
             if "epochs_planned" in summary else summary.get("epochs_completed")),
            ("Precision", summary.get("precision")), ("Status", summary.get("status"))]
    return "<h2>Data</h2>" + pairs_table(rows)


def notes_html(summary: dict) -> str:
    """The start-up notes and warnings, as train.py printed them; warnings stand out."""
    notes = summary.get("notes")
    notes = [str(note) for note in notes if note] if isinstance(notes, list) else []
    if not notes:
        return ""
    items = "".join(f'<li{" class=warning" if note.startswith("WARNING") else ""}>{html.escape(note)}</li>'
                    for note in notes)
    return f"<h2>Notes from the start of the run</h2><ul>{items}</ul>"


def verdict_html(summary: dict) -> str:
    """The state in capitals with its sentence, then the full reason and the advice."""
    state, sentence, advice = verdict_of(summary)
    collapse = part(summary, "collapse")
    reason = f"<p>{html.escape(collapse['reason'])}</p>" if collapse.get("reason") else ""
    advice_html = f"<p><b>Advice:</b> {html.escape(advice)}</p>" if advice else ""
    word = (state or "").upper()
    head = html.escape(sentence)  # The state's word in its colour, the rest of the sentence plain.
    if state and sentence.startswith(word):
        head = f'<span class="state {html.escape(state)}">{html.escape(word)}</span>{html.escape(sentence[len(word):])}'
    return f'<h2>Verdict</h2><div class="verdict"><p>{head}</p>{reason}{advice_html}</div>'


def figure_list(run_dir: str) -> list[tuple[str, str]]:
    """(file name, caption) of every PNG in the run folder: the known figures in order, then any others."""
    known = dict(FIGURES)
    try:
        others = sorted(name for name in os.listdir(run_dir) if name.lower().endswith(".png") and name not in known)
    except OSError:
        others = []
    found = [(name, caption) for name, caption in FIGURES if os.path.isfile(os.path.join(run_dir, name))]
    return found + [(name, name) for name in others if os.path.isfile(os.path.join(run_dir, name))]


def figures_html(run_dir: str) -> str:
    """Each figure embedded as a data: URI (the page works when moved or mailed), with its caption."""
    parts = []
    for name, caption in figure_list(run_dir):
        try:
            with open(os.path.join(run_dir, name), "rb") as handle:
                png = handle.read()
        except OSError:
            continue  # Unreadable now (removed meanwhile, say): the page shows the others.
        parts.append(f'<figure><img alt="{html.escape(name)}" src="{data_uri(png)}">'
                     f"<figcaption><b>{html.escape(name)}</b>: {html.escape(caption)}</figcaption></figure>")
    if not parts:
        return "<h2>Figures</h2><p>The run folder holds no figures.</p>"
    return "<h2>Figures</h2>" + "".join(parts)


def html_page(summary: dict, run_dir: str) -> str:
    """The whole page: inline style, no scripts, no network; it fits a 1280-pixel-wide screen."""
    state = verdict_of(summary)[0]
    title = html.escape(f"Run {os.path.basename(os.path.abspath(run_dir))}: {(state or 'no verdict').upper()}")
    validation = part(summary, "validation")
    block = "".join(f"<li>{html.escape(line)}</li>" for line in number_lines(validation))
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title>'
            f'<meta name="viewport" content="width=device-width"><style>{STYLE}</style></head><body>'
            f"<h1>{title}</h1><p>{html.escape(heading(summary, validation))}</p><ul>{block}</ul>"
            f"{verdict_html(summary)}{objective_html(summary)}{notes_html(summary)}{data_html(summary)}"
            f"<h2>Validation numbers (β = 1)</h2>{validation_table(validation)}"
            f"{figures_html(run_dir)}</body></html>\n")


def write(run_dir: str, summary: Optional[dict] = None) -> str:
    """Write <run_dir>/report.html from summary (default: the folder's summary.json); returns its path."""
    if summary is None:
        summary = atomic.read_json(os.path.join(run_dir, "summary.json"))
    if not isinstance(summary, dict):
        raise folders.RunFolderError(f"{run_dir} holds no readable summary.json; pass a folder written by train.py.")
    path = os.path.join(run_dir, PAGE)
    atomic.atomic_write_text(path, html_page(summary, run_dir))
    return path


def publish(run_dir: str, summary: dict) -> Optional[str]:
    """Write report.html and print the block. A page that cannot be written (a full disk) is one warning
    line, not a failure: the run and its summary.json are complete, and the PNGs are there."""
    try:
        page = write(run_dir, summary)
    except OSError as error:
        page = None
        why = error.strerror or exits.first_line(error)
        print(f"warning: {os.path.join(run_dir, PAGE)} could not be written ({why}); `python evaluate.py --run "
              f"{run_dir}` writes it again.", file=sys.stderr)
    print("\n".join(console_lines(summary, run_dir, page)))
    return page

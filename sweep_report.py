"""The sweep's outputs: results.csv/.md, comparison.png, rate_distortion.png and report.html.

sweep.py trains the runs; this module reads their summary.json files and model.keras
files and draws the comparison a person reads at a glance.
"""

import base64
import html
import os

import numpy as np

import runs

LOG_DIR = "logs"  # Each run's train.py output, as <sweep folder>/logs/<label>.log.
FIGURES = (("comparison.png", "Validation digits (top row) and each setting's reconstructions"),
           ("rate_distortion.png", "Rate (KL) against distortion (reconstruction), one point per run"))


def yaml_text(value):
    """A scalar as YAML text that reads back as the same value (repr-exact for floats)."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def result_rows(plan, statuses, walls):
    """One row per run: its settings, what its summary.json says, and its wall time."""
    rows = []
    for run in plan.runs:
        summary = runs.read_json(os.path.join(plan.folder, run.label, "summary.json")) or {}
        validation, collapse = summary.get("validation") or {}, summary.get("collapse") or {}
        row = {"run": run.label, **{key: yaml_text(value) for key, value in run.settings.items()},
               "effective_beta": (summary.get("objective") or {}).get("effective_beta"),
               "status": statuses[run.label], "epochs_completed": summary.get("epochs_completed")}
        for key in ("neg_elbo_nats", "iwae_nll_nats", "kl_nats", "reconstruction_nats", "active_units"):
            row[key] = validation.get(key)
        row.update(collapsed=collapse.get("detected"), collapse_reason=collapse.get("reason"),
                   wall_seconds=round(walls.get(run.label, 0.0), 1) or None,
                   log=os.path.join(LOG_DIR, f"{run.label}.log"))
        rows.append(row)
    return rows


def cell(value):
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def markdown_table(rows):
    lines = ["| " + " | ".join(rows[0]) + " |", "|" + "---|" * len(rows[0])]
    lines += ["| " + " | ".join(cell(v).replace("|", "\\|") for v in row.values()) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def row_title(plan, row):
    lines = [f"{key.split('.')[1]}={row[key]}" for key in plan.grid] + [f"β={row['effective_beta']:g}"]
    return "\n".join(lines) + ("\nCOLLAPSED" if row["collapsed"] else "")


def draw_figures(plan, done):
    """comparison.png (fixed validation digits, one row per setting) and rate_distortion.png."""
    import keras

    import data
    import model  # noqa: F401  Registers the VAE classes so model.keras loads in safe mode.
    import plots

    digits = data.load_digits(plan.base.data, plan.base.train.seed)
    index = plots.pick_one_per_class(digits.y_val)
    images, titles = [digits.x_val[index]], ["input"]
    for row in done:
        vae = keras.saving.load_model(os.path.join(plan.folder, row["run"], "model.keras"), safe_mode=True)
        images.append(np.asarray(vae(digits.x_val[index])))  # A direct call: no predict function to trace.
        titles.append(row_title(plan, row))
    plots.image_rows(images, titles, digits.y_val[index], os.path.join(plan.folder, FIGURES[0][0]), FIGURES[0][1])
    points = [(", ".join(row[key] for key in plan.grid) + f" (β={row['effective_beta']:g})", row["kl_nats"],
               row["reconstruction_nats"]) for row in done]
    plots.rate_distortion(points, os.path.join(plan.folder, FIGURES[1][0]), FIGURES[1][1],
                          [bool(row["collapsed"]) for row in done])


def findings(rows):
    """The sweep in plain words: which settings collapsed, from which β, and which did best."""
    done = [row for row in rows if row["status"] == "complete"]
    unhealthy = [f"{row['run']} ({row['status']}, see {row['log']})" for row in rows if row["status"] != "complete"]
    problems = ["Not finished: " + "; ".join(unhealthy) + "."] if unhealthy else []
    if not done:
        return " ".join(["No run has finished, so there is nothing to compare yet."] + problems)
    collapsed = [row for row in done if row["collapsed"]]
    kept = [row for row in done if not row["collapsed"]]
    words = []
    if collapsed:
        low = min(row["effective_beta"] for row in collapsed)
        words.append(f"{len(collapsed)} of {len(done)} finished runs collapsed (their reconstructions ignore the "
                     f"latent code): {', '.join(row['run'] for row in collapsed)}.")
        high = max((row["effective_beta"] for row in kept), default=None)
        if high is None:
            words.append("Every run collapsed, even the smallest effective β tried.")
        elif high < low:
            words.append(f"Collapse sets in between effective β = {high:g} (the largest that kept its code) "
                         f"and β = {low:g} (the smallest that collapsed).")
        else:
            words.append(f"β alone does not decide it here: β = {low:g} collapsed but β = {high:g} did not "
                         f"(short training and the other settings matter too).")
    else:
        words.append("No run collapsed: every finished run keeps information in its latent code.")
    best = min(done, key=lambda row: row["neg_elbo_nats"])
    words.append(f"The lowest negative ELBO (the β = 1 objective, lower is better) is {best['neg_elbo_nats']:.2f} "
                 f"nats/digit, by {best['run']} (effective β = {best['effective_beta']:g}).")
    return " ".join(words + problems)


def html_page(plan, rows, summary):
    """A self-contained page: inline style, the table, and the figures as base64 data URIs."""
    head = "".join(f"<th>{html.escape(key)}</th>" for key in rows[0])
    body = "".join("<tr>" + "".join(f"<td>{html.escape(cell(v))}</td>" for v in row.values()) + "</tr>"
                   for row in rows)
    figures = ""
    for name, caption in FIGURES:
        path = os.path.join(plan.folder, name)
        if os.path.exists(path):
            with open(path, "rb") as handle:
                data_uri = "data:image/png;base64," + base64.b64encode(handle.read()).decode("ascii")
            figures += (f'<figure><img alt="{html.escape(caption)}" src="{data_uri}">'
                        f"<figcaption>{html.escape(caption)}</figcaption></figure>")
    title = html.escape(f"Sweep {os.path.basename(plan.folder)}")
    style = ("body{font-family:sans-serif;margin:2em;max-width:1200px}table{border-collapse:collapse;font-size:13px}"
             "td,th{border:1px solid #ccc;padding:3px 6px}img{max-width:100%}")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title><style>{style}</style>'
            f"</head><body><h1>{title}</h1><p>{html.escape(summary)}</p><table><tr>{head}</tr>{body}</table>"
            f"{figures}</body></html>\n")


def write_outputs(plan, rows):
    """results.csv, results.md, the figures (when some run finished) and report.html."""
    runs.write_csv(os.path.join(plan.folder, "results.csv"), rows)
    runs.atomic_write_text(os.path.join(plan.folder, "results.md"), markdown_table(rows))
    done = [row for row in rows if row["status"] == "complete"]
    if done:
        draw_figures(plan, done)
    summary = findings(rows)
    runs.atomic_write_text(os.path.join(plan.folder, "report.html"), html_page(plan, rows, summary))
    return summary

"""The sweep's outputs: results.csv/.md, comparison.png, rate_distortion.png and report.html
(frontier.py adds sweep.py --frontier's frontier.png, frontier.md and a section of report.html).

sweep.py trains the runs; this module reads their summary.json files and model.keras
files and draws the comparison a person reads at a glance. A *setting* is one combination
of the grid without the seed; results.csv has one row per run (setting × seed), the other
outputs one per setting: the mean ± standard error over its seeds and "collapsed in k of N".
"""

import base64
import html
import math
import os
import urllib.parse
from collections.abc import Callable, Iterable, Sequence
from typing import Any, Optional

import numpy as np

from vae_kl.process import atomic

LOG_DIR = "logs"  # Each run's train.py output, as <sweep folder>/logs/<label>.log.
SEED_KEY = "train.seed"  # Not part of a setting: runs that differ only in it are its seeds.
FIGURES = (("comparison.png", "Validation digits (top row) and each setting's reconstructions"),
           ("rate_distortion.png", "Rate (KL) against distortion (reconstruction), one point per setting"))
METRICS = (("neg_elbo_nats", "−ELBO (nats)"), ("iwae_nll_nats", "IWAE bound (nats)"), ("kl_nats", "KL (nats)"),
           ("reconstruction_nats", "Reconstruction (nats)"), ("active_units", "Active units"))
NOISE_SE = 2  # A difference counts when it exceeds this many standard errors of the difference.
FIELD_NAMES = {"kl_weight": "λ (KL weight)", "kl_weight_norm": "β_norm",
               "reconstruction_reduction": "Reconstruction reduction", "kl_reduction": "KL reduction",
               "latent_dim": "Latent size"}


def yaml_text(value: Any) -> str:
    """A scalar as YAML text that reads back as the same value (repr-exact for floats)."""
    import yaml

    return yaml.safe_dump(value, default_flow_style=True).strip().removesuffix("...").strip()


def collapse_state(collapse: dict) -> Optional[str]:
    """"healthy", "partial" or "collapsed" from a summary's collapse verdict; older summaries only
    have `detected`. None when the run has no verdict."""
    if collapse.get("state"):
        return str(collapse["state"]).lower()
    if collapse.get("detected") is None:
        return None
    return "collapsed" if collapse["detected"] else "healthy"


def setting_keys(grid: dict) -> list[str]:
    return [key for key in grid if key != SEED_KEY]


def setting_label(settings: dict) -> str:
    """"kl_weight=0.1, reconstruction_reduction=mean": the run's grid values without the seed."""
    return ", ".join(f"{key.split('.')[1]}={value}" for key, value in settings.items() if key != SEED_KEY) \
        or "base config"


def result_rows(plan: Any, statuses: dict[str, str], walls: dict[str, float]) -> list[dict]:
    """One row per run: its setting and seed, what its summary.json says, and its wall time."""
    rows = []
    for run in plan.runs:
        summary = atomic.read_json(os.path.join(plan.folder, run.label, "summary.json")) or {}
        validation, collapse = summary.get("validation") or {}, summary.get("collapse") or {}
        settings = {key: yaml_text(value) for key, value in run.settings.items() if key != SEED_KEY}
        row = {"run": run.label, "setting": setting_label(settings), **settings, "seed": run.cfg.train.seed,
               "effective_beta": (summary.get("objective") or {}).get("effective_beta"),
               "status": statuses[run.label], "epochs_completed": summary.get("epochs_completed")}
        for key, _ in METRICS:
            row[key] = validation.get(key)
        state = collapse_state(collapse)
        row.update(collapse_state=state, collapsed=None if state is None else state == "collapsed",
                   collapse_reason=collapse.get("reason"), collapse_advice=collapse.get("advice"),
                   wall_seconds=round(walls.get(run.label, 0.0), 1) or None,
                   log=os.path.join(LOG_DIR, f"{run.label}.log"))
        rows.append(row)
    return rows


def mean_se(values: Iterable[Optional[float]]) -> tuple[Optional[float], Optional[float]]:
    """(mean, standard error of the mean with ddof=1); the error is None for fewer than two values."""
    values = [float(v) for v in values if v is not None]
    if not values:
        return None, None
    se = float(np.std(values, ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return float(np.mean(values)), se


def aggregate(rows: list[dict]) -> list[dict]:
    """One entry per setting, in the order settings first appear: its runs, the finished ones (`done`,
    by seed), `n` of `planned`, `collapsed` (k of n), state counts and mean ± s.e. of every metric."""
    groups = {}
    for row in rows:
        groups.setdefault(row["setting"], []).append(row)
    settings = []
    for label, members in groups.items():
        done = sorted((row for row in members if row["status"] == "complete"), key=lambda row: row.get("seed") or 0)
        states = [row.get("collapse_state") for row in done]
        betas = [row.get("effective_beta") for row in members if row.get("effective_beta") is not None]
        settings.append({
            "setting": label, "rows": members, "done": done, "n": len(done), "planned": len(members),
            "beta": betas[0] if betas else None, "collapsed": states.count("collapsed"),
            "states": {state: states.count(state) for state in ("collapsed", "partial", "healthy") if state in states},
            **{key: mean_se(row.get(key) for row in done) for key, _ in METRICS}})
    return settings


# ---- Text for tables and the summary ---------------------------------------------------------------

def cell(value: Any) -> str:
    if isinstance(value, bool):
        return "yes" if value else "no"
    return "" if value is None else f"{value:.4g}" if isinstance(value, float) else str(value)


def number(value: Optional[float], digits: int = 2) -> str:
    return "" if value is None else f"{value:,.{digits}f}"


def plus_minus(stat: tuple[Optional[float], Optional[float]], digits: int = 2) -> str:
    mean, se = stat
    return "" if mean is None else number(mean, digits) + ("" if se is None else f" ± {number(se, digits)}")


def beta_text(beta: Optional[float]) -> str:
    return "" if beta is None else f"{beta:,.6g}"


def seeds_text(n: int) -> str:
    return f"{n} seed{'s' if n != 1 else ''}"


def state_text(setting: dict) -> str:
    """"COLLAPSED in 2 of 3, HEALTHY in 1 of 3"; one finished run: just its state."""
    n = setting["n"]
    if not setting["states"]:
        return ""
    if n == 1:
        return next(iter(setting["states"])).upper()
    return ", ".join(f"{state.upper()} in {count} of {n}" for state, count in setting["states"].items())


def human_key(key: str) -> str:
    field = key.split(".")[1]
    return FIELD_NAMES.get(field, field.replace("_", " ").capitalize())


def setting_columns(grid: dict) -> list[tuple[str, Callable[[dict], str]]]:
    """(header, text of a setting) for the per-setting tables of results.md and report.html."""
    columns = [(human_key(key), lambda s, key=key: s["rows"][0].get(key, "")) for key in setting_keys(grid)]
    columns += [("Effective β", lambda s: beta_text(s["beta"])),
                ("Seeds finished", lambda s: f"{s['n']} of {s['planned']}")]
    columns += [(header, lambda s, key=key: plus_minus(s[key], 1 if key == "active_units" else 2))
                for key, header in METRICS]
    return columns + [("Collapse", state_text)]


RUN_COLUMNS = (("Run", lambda r: r["run"]), ("Seed", lambda r: cell(r.get("seed"))), ("Status", lambda r: r["status"]),
               ("Effective β", lambda r: beta_text(r.get("effective_beta"))),
               *[(header, lambda r, key=key: cell(r.get(key)) if key == "active_units" else number(r.get(key)))
                 for key, header in METRICS],
               ("Collapse", lambda r: (r.get("collapse_state") or "").upper()),
               ("Reason", lambda r: r.get("collapse_reason") or ""),
               ("Time (s)", lambda r: number(r.get("wall_seconds"), 0)), ("Log", lambda r: r["log"]))


def markdown_table(items: Iterable[Any], columns: Sequence[tuple[str, Callable[[Any], str]]]) -> str:
    """A Markdown table of `items` with `columns` = [(header, text of an item)]."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(text(item).replace("|", "\\|") for _, text in columns) + " |" for item in items]
    return "\n".join(lines) + "\n"


def results_markdown(plan: Any, rows: list[dict]) -> str:
    settings = aggregate(rows)
    return (f"# {page_title(plan, rows)}\n\n## Per setting (mean ± standard error over seeds)\n\n"
            + markdown_table(settings, setting_columns(plan.grid)) + "\n## Per run\n\n"
            + markdown_table(rows, RUN_COLUMNS))


def page_title(plan: Any, rows: list[dict]) -> str:
    name = os.path.basename(plan.folder).removeprefix("sweep_")
    n_settings, n_seeds = len(aggregate(rows)), len({row.get("seed") for row in rows})
    return f"Sweep '{name}': {n_settings} setting{'s' if n_settings != 1 else ''} × {seeds_text(n_seeds)}"


def collapse_words(measured: list[dict]) -> list[str]:
    """Where collapse sets in across settings, in words; checks that it follows effective β."""
    always = [s for s in measured if s["collapsed"] == s["n"]]
    never = [s for s in measured if s["collapsed"] == 0]
    some = [s for s in measured if 0 < s["collapsed"] < s["n"]]
    if not never and not some:
        low = min((s["beta"] for s in measured if s["beta"] is not None), default=None)
        return [f"Every setting collapsed in every seed, even the smallest effective β tried (β = {beta_text(low)})."]
    if not always and not some:
        return ["No setting collapsed in any seed: every finished run keeps information in its latent code."]
    ranked = sorted((s for s in measured if s["beta"] is not None), key=lambda s: s["beta"])
    for a in ranked:  # Monotone: a larger β never collapses in a smaller share of its seeds.
        for b in ranked:
            if a["beta"] <= b["beta"] and a is not b and a["collapsed"] / a["n"] > b["collapsed"] / b["n"]:
                return [f"Effective β alone does not decide collapse here: {a['setting']} (β = {beta_text(a['beta'])})"
                        f" collapsed in {a['collapsed']} of {a['n']} seeds but {b['setting']} (β = "
                        f"{beta_text(b['beta'])}) in {b['collapsed']} of {b['n']}; short training and the other "
                        f"settings matter too."]
    parts = []
    if always:
        parts.append(f"every setting with β ≥ {beta_text(min(s['beta'] for s in always))} collapsed in all seeds")
    if never:
        parts.append(f"every setting with β ≤ {beta_text(max(s['beta'] for s in never))} in none")
    words = ["Collapse follows effective β: " + ", ".join(parts) + "."] if parts else []
    if some:  # With no setting always or never collapsed, there is no "in between".
        words.append(("In between, collapse" if parts else "Collapse") + " depends on the seed: " + "; ".join(
            f"{s['setting']} (β = {beta_text(s['beta'])}) collapsed in {s['collapsed']} of {s['n']}"
            for s in some) + ".")
    return words


def best_words(measured: list[dict]) -> list[str]:
    """The lowest mean −ELBO, and which other settings are within seed noise of it."""
    scored = sorted((s for s in measured if s["neg_elbo_nats"][0] is not None), key=lambda s: s["neg_elbo_nats"][0])
    if not scored:
        return []
    best, others = scored[0], scored[1:]
    words = [f"The lowest mean −ELBO (the β = 1 objective, lower is better) is {plus_minus(best['neg_elbo_nats'])} "
             f"nats/digit ({seeds_text(best['n'])}), by {best['setting']} (effective β = {beta_text(best['beta'])})."]
    if not others:
        return words
    if any(s["neg_elbo_nats"][1] is None for s in scored):
        gap = others[0]["neg_elbo_nats"][0] - best["neg_elbo_nats"][0]
        return words + [f"The next best, {others[0]['setting']}, is {gap:.2f} nats worse; with one seed there is no "
                        f"estimate of the seed noise, so run with --seeds 3 before trusting a difference of a few "
                        f"nats."]
    se_best = best["neg_elbo_nats"][1]
    within = [s for s in others if s["neg_elbo_nats"][0] - best["neg_elbo_nats"][0]
              <= NOISE_SE * math.hypot(se_best, s["neg_elbo_nats"][1])]
    if within:
        named = [f"{s['setting']} ({plus_minus(s['neg_elbo_nats'])})" for s in within[:4]]  # The closest four.
        more = f"; and {len(within) - 4} more" if len(within) > 4 else ""
        return words + ["Within seed noise of it (a difference under 2 standard errors, so the seeds cannot tell them "
                        "apart): " + "; ".join(named) + more + "."]
    nxt = others[0]
    gap = nxt["neg_elbo_nats"][0] - best["neg_elbo_nats"][0]
    return words + [f"It beats the next best, {nxt['setting']} ({plus_minus(nxt['neg_elbo_nats'])}), by {gap:.2f} "
                    f"nats, {gap / math.hypot(se_best, nxt['neg_elbo_nats'][1]):.1f} standard errors: more than seed "
                    f"noise."]


def findings(rows: list[dict]) -> str:
    """The sweep in plain words, per setting over its seeds: where collapse sets in, which did best and
    whether that is more than seed noise, and which runs did not finish."""
    unhealthy = [f"{row['run']} ({row['status']}, see {row['log']})" for row in rows if row["status"] != "complete"]
    problems = ["Not finished: " + "; ".join(unhealthy) + "."] if unhealthy else []
    measured = [s for s in aggregate(rows) if s["n"]]
    if not measured:
        return " ".join(["No run has finished, so there is nothing to compare yet."] + problems)
    return " ".join(collapse_words(measured) + best_words(measured) + problems)


# ---- Figures -----------------------------------------------------------------------------------------

def row_title(plan: Any, setting: dict) -> str:
    """Contact-sheet label: the setting's values, its β, the seed shown, and its state in capitals."""
    first = setting["done"][0]
    lines = [f"{key.split('.')[1]}={first[key]}" for key in setting_keys(plan.grid)]
    lines.append(f"β={beta_text(first['effective_beta'])}")
    if setting["planned"] > 1:
        lines.append(f"seed {first['seed']}")
    return "\n".join(lines + [state_text(setting)])


def draw_figures(plan: Any, done: list[dict], load_model: Callable[[str], Any]) -> None:
    """comparison.png (fixed validation digits, one row per setting: its first seed's model) and
    rate_distortion.png (per setting: the mean over seeds ± standard error, single seeds faint).
    load_model: path -> the VAE in a model.keras (model.load)."""
    from vae_kl.data import sources
    from vae_kl.reports import plots

    settings = aggregate(done)
    digits = sources.load_digits(plan.base.data, plan.base.train.seed)
    index = plots.pick_one_per_class(digits.y_val)
    images, titles = [digits.x_val[index]], ["input"]
    for setting in settings:
        first = setting["done"][0]
        vae = load_model(os.path.join(plan.folder, first["run"], "model.keras"))
        images.append(np.asarray(vae(digits.x_val[index])))  # A direct call: no predict function to trace.
        titles.append(row_title(plan, setting))
    seeded = any(s["n"] > 1 for s in settings)
    caption = FIGURES[0][1] + (" (the model of each setting's first seed)" if seeded else "")
    plots.image_rows(images, titles, digits.y_val[index], os.path.join(plan.folder, FIGURES[0][0]), caption)
    points = [(s["setting"] + f" (β={beta_text(s['beta'])})"
               + (f", collapsed in {s['collapsed']} of {s['n']}" if 0 < s["collapsed"] < s["n"] else ""),
               s["kl_nats"][0], s["reconstruction_nats"][0]) for s in settings]
    errors = {axis: [s[key][1] or 0.0 for s in settings] if seeded else None
              for axis, key in (("xerr", "kl_nats"), ("yerr", "reconstruction_nats"))}
    seeds = [(row["kl_nats"], row["reconstruction_nats"], bool(row["collapsed"])) for row in done] if seeded else None
    title = (FIGURES[1][1] + (": the mean over seeds ± standard error, single seeds faint" if seeded else ""))
    plots.rate_distortion(points, os.path.join(plan.folder, FIGURES[1][0]), title,
                          [s["collapsed"] == s["n"] for s in settings], seeds=seeds, **errors)


# ---- report.html ---------------------------------------------------------------------------------------

def data_uri(png_bytes: bytes) -> str:
    return "data:image/png;base64," + base64.b64encode(png_bytes).decode("ascii")


def html_table(items: Iterable[Any], columns: Sequence[tuple[str, Callable[[Any], str]]],
               special: Optional[dict[str, Callable[[Any], str]]] = None) -> str:
    """An HTML table; `special` maps a header to a function giving that cell's HTML (others are escaped)."""
    special = special or {}
    head = "".join(f"<th>{html.escape(header)}</th>" for header, _ in columns)
    body = "".join("<tr>" + "".join(f"<td>{special[header](item)}</td>" if header in special else
                                    f"<td>{html.escape(text(item))}</td>" for header, text in columns) + "</tr>"
                   for item in items)
    return f"<table><tr>{head}</tr>{body}</table>"


def run_cells(plan: Any) -> dict[str, Callable[[dict], str]]:
    """HTML for the per-run table's cells that are more than text: links, the verdict's details, a thumbnail."""
    from vae_kl.reports import plots

    def thumbnail(row):
        path = os.path.join(plan.folder, row["run"], "reconstructions.png")
        if not os.path.exists(path):
            return ""
        return f'<img class="thumb" alt="reconstructions of {html.escape(row["run"])}" ' \
               f'src="{data_uri(plots.thumbnail_png(path))}">'

    def collapse(row):
        state = html.escape((row.get("collapse_state") or "").upper())
        why = " ".join(filter(None, [row.get("collapse_reason"), row.get("collapse_advice")]))
        return f'<span class="{state.lower()}">{state}</span>' + \
            (f"<details><summary>why</summary>{html.escape(why)}</details>" if why else "")

    def link(href, text):
        return f'<a href="{html.escape(urllib.parse.quote(href))}">{html.escape(text)}</a>'

    return {"Run": lambda row: link(row["run"] + "/", row["run"]), "Collapse": collapse,
            "Reconstructions": thumbnail, "Log": lambda row: link(row["log"], "log")}


def setting_state_html(setting: dict) -> str:
    """The per-setting state, coloured by its most severe state (collapsed before partial)."""
    worst = next((state for state in ("collapsed", "partial") if state in setting["states"]), "healthy")
    return f'<span class="{worst}">{html.escape(state_text(setting))}</span>'


HTML_RUN_HEADERS = ("Run", "Seed", "Status", "−ELBO (nats)", "KL (nats)", "Active units", "Collapse",
                    "Reconstructions", "Time (s)", "Log")


def figure_html(path: str, caption: str) -> str:
    """A PNG as a <figure> with the image inline (a base64 data URI); "" when the file does not exist."""
    if not os.path.exists(path):
        return ""
    with open(path, "rb") as handle:
        return (f'<figure><img alt="{html.escape(caption)}" src="{data_uri(handle.read())}">'
                f"<figcaption>{html.escape(caption)}</figcaption></figure>")


def html_page(plan: Any, rows: list[dict], summary: str, sections: Sequence[str] = ()) -> str:
    """A self-contained page that fits 1280 px: inline style, the per-setting and per-run tables, and the
    figures and thumbnails as base64 data URIs; run folders and logs are relative links. sections: more
    HTML after the figures (sweep.py --frontier's)."""
    columns = dict(RUN_COLUMNS, Reconstructions=lambda row: "")
    run_table = html_table(rows, [(header, columns[header]) for header in HTML_RUN_HEADERS], run_cells(plan))
    figures = "".join(figure_html(os.path.join(plan.folder, name), caption) for name, caption in FIGURES)
    title = html.escape(page_title(plan, rows))
    style = ("body{font-family:sans-serif;margin:1em auto;padding:0 1em;max-width:1200px;box-sizing:border-box}"
             "table{border-collapse:collapse;font-size:12px;width:100%;margin-bottom:1.5em}"
             "td,th{border:1px solid #ccc;padding:3px 5px;vertical-align:top;overflow-wrap:anywhere}"
             "th{background:#f2f2f2;text-align:left}img{max-width:100%}img.thumb{width:180px}"
             ".collapsed{color:#b00;font-weight:bold}.partial{color:#a60;font-weight:bold}"
             "details{font-size:11px;color:#444}summary{cursor:pointer;color:#06c}")
    return (f'<!DOCTYPE html>\n<html><head><meta charset="utf-8"><title>{title}</title><style>{style}</style>'
            f"</head><body><h1>{title}</h1><p>{html.escape(summary)}</p>"
            f"<h2>Per setting (mean ± standard error over seeds)</h2>"
            f"{html_table(aggregate(rows), setting_columns(plan.grid), {'Collapse': setting_state_html})}"
            f"<h2>Per run</h2>{run_table}"
            f"{figures}{''.join(sections)}</body></html>\n")


def write_outputs(plan: Any, rows: list[dict], load_model: Callable[[str], Any], sections: Sequence[str] = ()) -> str:
    """results.csv, results.md, the figures (when some run finished; load_model: path -> the VAE of a
    model.keras) and report.html (with `sections`, more HTML after the figures)."""
    atomic.write_csv(os.path.join(plan.folder, "results.csv"), rows)
    atomic.atomic_write_text(os.path.join(plan.folder, "results.md"), results_markdown(plan, rows))
    done = [row for row in rows if row["status"] == "complete"]
    if done:
        draw_figures(plan, done, load_model)
    summary = findings(rows)
    atomic.atomic_write_text(os.path.join(plan.folder, "report.html"), html_page(plan, rows, summary, sections))
    return summary

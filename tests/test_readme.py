"""The README's recipe table holds the numbers `train.py --explain` prints, for every recipe in recipes/."""

import math
import os
import re

from conftest import ROOT
from vae_kl.data import sources
from vae_kl.spec import config, plan


def readme_recipe_rows():
    """{recipe name: {column header: cell text}} of the README table whose rows link into recipes/."""
    with open(os.path.join(ROOT, "README.md"), encoding="utf-8") as handle:
        lines = handle.read().splitlines()
    header, rows = None, {}
    for line in lines:
        cells = [cell.strip() for cell in line.strip().strip("|").split("|")] if line.startswith("|") else None
        if cells and cells[0] == "recipe":
            header = cells
        elif cells and header and (link := re.fullmatch(r"\[(\w[\w.]*)\]\(recipes/\1\.yaml\)", cells[0])):
            rows[link.group(1)] = dict(zip(header, cells))
    return rows


def test_every_recipe_is_in_the_readme_with_the_beta_explain_prints():
    rows = readme_recipe_rows()
    recipes = sorted(name[:-5] for name in os.listdir(os.path.join(ROOT, "recipes")) if name.endswith(".yaml"))
    assert sorted(rows) == recipes
    for name in recipes:
        cfg, _ = config.load(os.path.join(ROOT, "recipes", f"{name}.yaml"))
        shape = sources.peek(cfg.data)
        described = plan.Plan.from_config(cfg, shape.image_shape, shape.train_examples).description
        # The formats --explain prints: β with :g, β_norm with :.4g.
        assert rows[name]["effective β"] == f"{described['effective_beta']:g}", name
        assert math.isclose(float(rows[name]["β_norm"]), described["beta_norm"], rel_tol=5e-4), name
        reductions = (rows[name]["reconstruction"].split()[0], rows[name]["KL"])
        assert reductions == (cfg.loss.reconstruction_reduction, cfg.loss.kl_reduction), name

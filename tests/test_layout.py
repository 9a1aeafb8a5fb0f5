"""The design's rules, checked on the source: imports point one way, and the Gaussian density has one home."""

import ast
import os
import re

from conftest import ROOT

MODULES = sorted(name[:-3] for name in os.listdir(ROOT) if name.endswith(".py"))


def imports_of(module):
    """Project modules that `module` imports anywhere in its file (top level or inside functions)."""
    with open(os.path.join(ROOT, f"{module}.py"), encoding="utf-8") as handle:
        tree = ast.parse(handle.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            found.add(node.module.split(".")[0])
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Deferred" and node.args
              and isinstance(node.args[0], ast.Constant)):  # choices.Deferred("losses"): an import at first use.
            found.add(node.args[0].value.split(".")[0])
    return found & set(MODULES) - {module}


def test_the_project_modules_import_each_other_without_a_cycle():
    graph = {module: imports_of(module) for module in MODULES}
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join(path + [module])
        state[module] = "open"
        for dependency in sorted(graph[module]):
            visit(dependency, path + [module])
        state[module] = "done"

    for module in MODULES:
        visit(module, [])
    assert "train" not in graph["evaluate"] and "evaluate" in graph["train"]  # Re-evaluation lives in evaluate.py.


def test_the_choice_families_and_the_process_concerns_sit_below_everything_else():
    # config validates names against the families' registries, so they must not import config (or anything
    # above it); likelihoods and priors reach losses.py only at first use (choices.Deferred).
    assert imports_of("likelihoods") == {"choices", "losses"} and imports_of("priors") == {"choices", "losses"}
    assert imports_of("schedules") == {"choices"} and imports_of("choices") == set()
    assert imports_of("process") == set() and imports_of("atomic") == {"process"}
    assert imports_of("config") == {"likelihoods", "priors", "schedules", "process"}
    assert "runs" not in imports_of("plots") and "data" not in imports_of("runs")


def test_the_gaussian_log_density_is_written_in_one_module():
    pattern = re.compile(r"LOG_2PI|log\(2 \* (math|np)\.pi|2 \* (math|np)\.pi \* math\.e")
    writers = []
    for module in MODULES:
        with open(os.path.join(ROOT, f"{module}.py"), encoding="utf-8") as handle:
            if pattern.search(handle.read()):
                writers.append(module)
    assert writers == ["losses"]


def test_the_files_named_longest_first_exist():
    import conftest

    assert [name for name in conftest.LONGEST_FIRST if not os.path.isfile(os.path.join(ROOT, "tests", name))] == []

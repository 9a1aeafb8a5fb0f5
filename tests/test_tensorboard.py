"""tensorboard_log: what the event files hold, read back with TensorBoard's own readers."""

import glob
import json
import os

import numpy as np
import pytest

pytest.importorskip("tensorboard")

import tensorflow as tf  # noqa: E402
from tensorboard.backend.event_processing import event_accumulator, event_file_loader  # noqa: E402
from tensorboard.plugins.hparams import plugin_data_pb2  # noqa: E402

from vae_kl.tracking import tensorboard_log  # noqa: E402
from vae_kl.tracking.tensorboard_log import TensorBoardLogger  # noqa: E402

SETTINGS = {"loss": {"kl_weight": 0.1, "reconstruction_reduction": "mean", "kl_weight_norm": None},
            "model": {"latent_dim": 2, "fast_layers": True}}


def accumulator(folder):
    # purge_orphaned_data=False: show what the files hold, not what TensorBoard would hide.
    acc = event_accumulator.EventAccumulator(str(folder), size_guidance={event_accumulator.TENSORS: 0},
                                             purge_orphaned_data=False)
    acc.Reload()
    return acc


def scalars(folder, tag):
    return [(e.step, float(tf.make_ndarray(e.tensor_proto))) for e in accumulator(folder).Tensors(tag)]


def raw_events(folder):
    """(tag, step) of every summary value in every event file of folder, in file order."""
    found = []
    for path in sorted(glob.glob(os.path.join(str(folder), "*tfevents*"))):
        for event in event_file_loader.EventFileLoader(path).Load():
            found += [(value.tag, event.step) for value in event.summary.value]
    return found


def epoch_logs(epoch):
    return {"loss": 200.0 - epoch, "reconstruction": 190.0 - epoch, "kl": 10.0 + epoch, "neg_elbo": 201.0 - epoch,
            "val_loss": 205.0 - epoch, "val_kl": 9.5 + epoch, "val_neg_elbo": 206.0 - epoch,
            "kl_weight": 0.5 * epoch, "kl_per_unit": [1.0 + epoch, 0.25], "note": "not a number"}


def drive(logger, epochs, first=0):
    logger.on_train_begin()
    for epoch in range(first, epochs):
        logger.on_epoch_begin(epoch)
        logger.on_epoch_end(epoch, epoch_logs(epoch))


def test_every_numeric_log_key_is_a_scalar_per_epoch(tmp_path):
    drive(TensorBoardLogger(str(tmp_path)), 3)
    train, validation = tmp_path / "train", tmp_path / "validation"
    for tag in ["loss", "reconstruction", "kl", "neg_elbo", "kl_weight"]:
        assert scalars(train, tag) == [(e + 1, pytest.approx(epoch_logs(e)[tag])) for e in range(3)], tag
    for tag in ["loss", "kl", "neg_elbo"]:  # val_ keys: the validation run, same tag as training's.
        assert scalars(validation, tag) == [(e + 1, pytest.approx(epoch_logs(e)["val_" + tag])) for e in range(3)]
    assert scalars(train, "kl_per_unit/0") == [(1, 1.0), (2, 2.0), (3, 3.0)]
    assert scalars(train, "kl_per_unit/1") == [(1, 0.25), (2, 0.25), (3, 0.25)]
    tags = accumulator(train).Tags()["tensors"]
    assert "note" not in tags and not any(t.startswith("val_") for t in tags)


def test_an_image_per_epoch_with_its_shape(tmp_path):
    grid = tensorboard_log.image_grid([np.zeros((10, 28, 28)), np.ones((10, 28, 28, 1))])
    assert grid.shape == (1, 56, 280, 1)
    drive(TensorBoardLogger(str(tmp_path), images_fn=lambda: grid), 2)
    events = accumulator(tmp_path / "validation").Tensors(tensorboard_log.IMAGE_TAG)
    assert [e.step for e in events] == [1, 2]
    width, height, png = tf.make_ndarray(events[-1].tensor_proto)  # TF2 image summaries: width, height, PNGs.
    assert (int(width), int(height)) == (280, 56)
    pixels = tf.io.decode_png(png).numpy()
    assert pixels.shape == (56, 280, 1)
    assert pixels[:28].max() == 0 and pixels[28:].min() == 255  # Inputs row black, reconstructions white.


def test_settings_as_text_and_hparams(tmp_path):
    drive(TensorBoardLogger(str(tmp_path), settings=SETTINGS, trial_id="kl_weight-0.1"), 1)
    acc = accumulator(tmp_path)
    (text,) = acc.Tensors(tensorboard_log.SETTINGS_TAG)
    table = tf.make_ndarray(text.tensor_proto).item().decode()
    assert "| `loss.kl_weight` | `0.1` |" in table and "| `loss.kl_weight_norm` | `None` |" in table
    content = acc.PluginTagToContent("hparams")["_hparams_/session_start_info"]
    info = plugin_data_pb2.HParamsPluginData.FromString(content).session_start_info
    assert info.group_name == "kl_weight-0.1"
    assert info.hparams["loss.kl_weight"].number_value == pytest.approx(0.1)
    assert info.hparams["loss.reconstruction_reduction"].string_value == "mean"
    assert info.hparams["loss.kl_weight_norm"].string_value == "null"
    assert info.hparams["model.latent_dim"].number_value == 2
    assert info.hparams["model.fast_layers"].bool_value is True


def test_a_resume_appends_without_duplicate_steps(tmp_path):
    # First attempt: 3 epochs logged, but (say) killed before the checkpoint of epoch 3 was written.
    first = TensorBoardLogger(str(tmp_path), settings=SETTINGS)
    drive(first, 3)
    first.close()
    # The resumed fit starts at initial_epoch 2 and trains epochs 3 and 4 with other values.
    second = TensorBoardLogger(str(tmp_path), settings=SETTINGS)
    second.on_train_begin()
    for epoch in (2, 3):
        second.on_epoch_begin(epoch)
        second.on_epoch_end(epoch, {"loss": 100.0 + epoch, "val_loss": 110.0 + epoch})
    second.on_train_end()
    loss_steps = [step for tag, step in raw_events(tmp_path / "train") if tag == "loss"]
    assert loss_steps == [1, 2, 3, 4]
    assert scalars(tmp_path / "train", "loss") == [(1, 200.0), (2, 199.0), (3, 102.0), (4, 103.0)]
    assert scalars(tmp_path / "validation", "loss") == [(1, 205.0), (2, 204.0), (3, 112.0), (4, 113.0)]
    assert [step for tag, step in raw_events(tmp_path / "train") if tag == "kl"] == [1, 2]  # Epoch 3's went.
    assert [tag for tag, _ in raw_events(tmp_path)].count(tensorboard_log.SETTINGS_TAG) == 1


def test_a_killed_run_keeps_its_flushed_epochs(tmp_path):
    logger = TensorBoardLogger(str(tmp_path))
    drive(logger, 2)  # Not closed, as after a kill: the epochs must already be on disk.
    assert [step for tag, step in raw_events(tmp_path / "train") if tag == "loss"] == [1, 2]
    logger.close()


def test_as_a_keras_callback_in_fit(tmp_path):
    import keras

    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(1)])
    model.compile(optimizer="sgd", loss="mse")
    x, y = np.ones((8, 3), "float32"), np.zeros((8, 1), "float32")
    model.fit(x, y, epochs=2, validation_data=(x, y), verbose=0,
              callbacks=[TensorBoardLogger(str(tmp_path), settings={"lr": 0.01})])
    assert [s for s, _ in scalars(tmp_path / "train", "loss")] == [1, 2]
    assert [s for s, _ in scalars(tmp_path / "validation", "loss")] == [1, 2]


def test_final_metrics_for_the_hparams_columns(tmp_path):
    validation = {"neg_elbo_nats": 180.5, "iwae_nll_nats": 176.0, "kl_nats": 4.5, "active_units": 1,
                  "kl_per_dim_nats": [0.1, 4.4], "iwae_k": 50, "mutual_information_nats": 3.9}
    metrics = tensorboard_log.final_metrics(validation, {"detected": False, "reason": "..."})
    assert metrics == {"neg_elbo_nats": 180.5, "iwae_nll_nats": 176.0, "kl_nats": 4.5, "active_units": 1.0,
                       "mutual_information_nats": 3.9, "collapsed": 0.0}
    tensorboard_log.write_final_metrics(str(tmp_path), metrics, step=30)
    assert scalars(tmp_path / "evaluation", "neg_elbo_nats") == [(30, 180.5)]
    assert scalars(tmp_path / "evaluation", "collapsed") == [(30, 0.0)]


def test_sweep_experiment_config(tmp_path):
    grid = {"loss.kl_weight": [0.1, 1, 10], "loss.reconstruction_reduction": ["sum", "mean"],
            "loss.gaussian_sigma": [0.1, "learned"]}
    assert tensorboard_log.write_sweep_hparams(str(tmp_path), grid)
    assert not tensorboard_log.write_sweep_hparams(str(tmp_path), grid)  # A re-run adds nothing.
    assert [tag for tag, _ in raw_events(tmp_path)] == [tensorboard_log.EXPERIMENT_TAG]
    content = accumulator(tmp_path).PluginTagToContent("hparams")[tensorboard_log.EXPERIMENT_TAG]
    experiment = plugin_data_pb2.HParamsPluginData.FromString(content).experiment
    infos = {info.name: info for info in experiment.hparam_infos}
    assert list(infos) == list(grid)
    assert [v.number_value for v in infos["loss.kl_weight"].domain_discrete.values] == [0.1, 1.0, 10.0]
    assert [v.string_value for v in infos["loss.reconstruction_reduction"].domain_discrete.values] == ["mean", "sum"]
    assert not infos["loss.gaussian_sigma"].HasField("domain_discrete")  # Mixed types: no domain.
    names = [(m.name.group, m.name.tag) for m in experiment.metric_infos]
    assert names == [("evaluation", tag) for tag, _, _ in tensorboard_log.FINAL_METRICS]


class Killed(BaseException):
    """Stands for a SIGKILL: nothing in train.py catches it, so no state is saved on the way out."""


def test_a_kill_between_an_epochs_events_and_its_checkpoint_leaves_each_epoch_once(tmp_path, monkeypatch):
    import train
    from conftest import quick_config
    from vae_kl.runs import records

    cfg = quick_config(tmp_path, "train.epochs=3", "output.tensorboard=true", "output.run_name=tb")
    save = records.save_checkpoint

    def die_at_the_second_checkpoint(run_dir, model, progress):
        if progress["epochs_completed"] == 2:
            raise Killed  # Epoch 2's events are on disk (they come first); its checkpoint is not.
        save(run_dir, model, progress)

    monkeypatch.setattr(records, "save_checkpoint", die_at_the_second_checkpoint)
    with pytest.raises(Killed):
        train.train(cfg)
    board = tmp_path / "tb" / "tensorboard"
    assert [step for tag, step in raw_events(board / "train") if tag == "loss"] == [1, 2]
    monkeypatch.setattr(records, "save_checkpoint", save)
    status, _ = train.train(cfg)  # Resumes after epoch 1: epoch 2 is pruned and trained again.
    assert status == 0
    for folder in ("train", "validation"):
        for tag in ("loss", "kl", "neg_elbo"):
            assert [s for t, s in raw_events(board / folder) if t == tag] == [1, 2, 3], (folder, tag)
    import csv  # The events hold the values metrics.csv holds, the resumed epoch 2's included.

    with open(tmp_path / "tb" / "metrics.csv", encoding="utf-8") as handle:
        rows = list(csv.DictReader(handle))
    assert [s for s, _ in scalars(board / "train", "loss")] == [1, 2, 3]
    assert [round(v, 3) for _, v in scalars(board / "train", "loss")] == [round(float(r["loss"]), 3) for r in rows]


def test_a_folder_that_cannot_take_events_gives_one_warning_and_no_error(tmp_path, capsys):
    folder = tmp_path / "tensorboard"
    folder.write_text("a file where the folder should be")
    drive(TensorBoardLogger(str(folder), settings=SETTINGS), 3)
    assert not tensorboard_log.write_final_metrics(str(folder), {"kl_nats": 1.0}, step=3)  # Given up: skipped.
    warnings = capsys.readouterr().out.strip().splitlines()
    assert len(warnings) == 1 and warnings[0].startswith("WARNING: TensorBoard events stopped before the first epoch")
    assert folder.read_text() == "a file where the folder should be"


def replacing_the_folder(board, after):
    """A callback that, after epoch `after`, puts a file where the run's tensorboard/ folder was (a user's
    mistake, a sync tool)."""
    import shutil

    import keras

    class ReplaceTheFolder(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            if epoch + 1 == after:
                shutil.rmtree(board)
                board.write_text("not a folder")

    return ReplaceTheFolder()


def test_the_folder_replaced_by_a_file_mid_run_warns_once_and_the_run_completes(tmp_path, capsys):
    import train
    from conftest import quick_config

    cfg = quick_config(tmp_path, "train.epochs=3", "output.tensorboard=true", "output.run_name=tb")
    board = tmp_path / "tb" / "tensorboard"
    status, run_dir = train.train(cfg, callbacks=[replacing_the_folder(board, after=1)])
    out = capsys.readouterr().out
    assert status == 0
    warnings = [line for line in out.splitlines() if "TensorBoard" in line and line.startswith("WARNING")]
    assert len(warnings) == 1 and "stopped in epoch 2" in warnings[0] and "is no longer a folder" in warnings[0]
    summary = json.loads((tmp_path / "tb" / "summary.json").read_text())
    assert summary["status"] == "complete" and summary["epochs_completed"] == 3
    assert (tmp_path / "tb" / "model.keras").is_file() and board.read_text() == "not a folder"
    assert len((tmp_path / "tb" / "metrics.csv").read_text().strip().splitlines()) == 1 + 3


def test_a_kill_as_the_evaluation_events_land_leaves_them_once(tmp_path, monkeypatch):
    import train
    from conftest import quick_config

    cfg = quick_config(tmp_path, "train.epochs=1", "output.tensorboard=true", "output.run_name=tb")
    write = tensorboard_log.write_run_evaluation

    def killed_after_the_events(*args):
        write(*args)
        raise Killed  # The evaluation's event file is in place; summary.json does not say complete yet.

    monkeypatch.setattr(tensorboard_log, "write_run_evaluation", killed_after_the_events)
    with pytest.raises(Killed):
        train.train(cfg)
    monkeypatch.setattr(tensorboard_log, "write_run_evaluation", write)
    assert json.loads((tmp_path / "tb" / "summary.json").read_text())["status"] == "running"
    status, _ = train.train(cfg)  # The same command again: nothing to train, the evaluation again.
    assert status == 0
    events = raw_events(tmp_path / "tb" / "tensorboard" / "evaluation")
    tags = [tag for tag, _ in events]
    assert sorted(tags) == sorted(set(tags)) and "neg_elbo_nats" in tags and {step for _, step in events} == {1}
    assert not glob.glob(str(tmp_path / "tb" / ".evaluation-events-*"))  # The scratch folder is gone.

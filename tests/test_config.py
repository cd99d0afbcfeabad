"""Config presets, overrides, validation errors and stage hashes."""

from __future__ import annotations

import pytest

from mia_tasks.config import CONFIG_DIR, load_config, stage_hashes
from mia_tasks.errors import LayerleakError


@pytest.mark.parametrize("preset", sorted(p.name for p in CONFIG_DIR.glob("*.yaml")))
def test_every_preset_loads(preset):
    cfg = load_config(preset)
    assert cfg.seed is not None


def test_presets_exist():
    names = {p.name for p in CONFIG_DIR.glob("*.yaml")}
    assert {"default.yaml", "cifar100-alexnet.yaml", "cifar100-resnet.yaml", "cifar100-cnn.yaml", "cifar10-jpeg-alexnet.yaml"} <= names


def test_overrides_parse_yaml_values():
    cfg = load_config(None, ["train.epochs=3", "model.options={depth: 32}", "dataset.mean=[0.1]", "split.audit=null"])
    assert cfg.train.epochs == 3 and cfg.model.options == {"depth": 32} and cfg.dataset.mean == [0.1] and cfg.split.audit is None


@pytest.mark.parametrize("override,msg", [
    ("train.epoch=3", "unknown config key 'train.epoch': section train has epochs"),
    ("colour=red", "unknown config key 'colour'"),
    ("dataset.name=imagenet", "unknown dataset 'imagenet'; choose one of digits"),
    ("model.arch=vgg", "unknown architecture 'vgg'"),
    ("train.epochs=-1", "train.epochs: must be a positive integer"),
    ("train.schedule=linear", "train.schedule: 'linear'; allowed: cosine, step, constant"),
    ("sweep.kinds=[grad,loss]", "sweep.kinds"),
    ("attack.kinds=[weights]", "attack.kinds"),
    ("sweep.method=guess", "sweep.method"),
    ("split.repeats=0", "split.repeats: must be a positive integer"),
    ("train", "expected key.path=value"),
])
def test_validation_errors_name_the_key(override, msg):
    with pytest.raises(LayerleakError, match=msg.replace("[", r"\[").replace("(", r"\(")):
        load_config(None, [override])


def test_missing_config_file():
    with pytest.raises(LayerleakError, match="config file .*nope.yaml not found"):
        load_config("nope.yaml")


def test_hashes_are_stable_and_stage_specific():
    base = stage_hashes(load_config())
    assert base == stage_hashes(load_config())
    sweep_only = stage_hashes(load_config(None, ["sweep.chunk_size=7", "sweep.players=groups"]))
    assert sweep_only["features"] == base["features"] and sweep_only["sweep"] != base["sweep"]
    paths_only = stage_hashes(load_config(None, ["output.dir=/elsewhere", "features.batch_size=3", "ray.fit_actors=5"]))
    assert paths_only == base  # where and how fast results are made does not change them
    seed = stage_hashes(load_config(None, ["seed=1"]))
    assert all(seed[s] != base[s] for s in ("splits", "target", "features", "sweep"))

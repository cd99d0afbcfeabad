"""Config presets, overrides, validation errors and stage hashes."""

from __future__ import annotations

import dataclasses

import pytest

from flows import presets
from mia_tasks.config import Config, load_config, stage_hashes
from mia_tasks.errors import LayerleakError
from mia_tasks.rules import Rule


@pytest.mark.parametrize("preset", presets.names())
def test_every_preset_loads(preset):
    cfg = presets.load(preset)
    assert cfg.seed is not None


def test_presets_exist():
    names = set(presets.names())
    assert {"default.yaml", "cifar100-alexnet.yaml", "cifar100-resnet.yaml", "cifar100-cnn.yaml", "cifar10-jpeg-alexnet.yaml"} <= names


def test_overrides_parse_yaml_values():
    cfg = presets.load(None, ["train.epochs=3", "model.options={depth: 32}", "dataset.mean=[0.1]", "split.audit=null"])
    assert cfg.train.epochs == 3 and cfg.model.options == {"depth": 32} and cfg.dataset.mean == [0.1] and cfg.split.audit is None


@pytest.mark.parametrize("override,msg", [
    ("train.epoch=3", "unknown config key 'train.epoch': section train has epochs"),
    ("colour=red", "unknown config key 'colour'"),
    ("dataset.name=imagenet", "config dataset.name: 'imagenet' is not allowed; expected one of digits, cifar10"),
    ("model.arch=vgg", "config model.arch: 'vgg' is not allowed; expected one of alexnet, cnn, resnet, or a factory"),
    ("train.epochs=-1", "config train.epochs: -1 is not allowed; expected a positive integer"),
    ("train.schedule=linear", "config train.schedule: 'linear' is not allowed; expected one of cosine, step, constant"),
    ("sweep.kinds=[grad,loss]", "config sweep.kinds: ['grad', 'loss'] is not allowed; expected a non-empty list, each one of grad, out"),
    ("attack.kinds=[weights]", "config attack.kinds: ['weights'] is not allowed; expected a non-empty list, each one of grad, out, loss"),
    ("sweep.method=guess", "config sweep.method: 'guess' is not allowed; expected one of exact, sampled"),
    ("attack.folds=1", "config attack.folds: 1 is not allowed; expected an integer in [2, 127]"),
    ("attack.bootstrap=0", "config attack.bootstrap: 0 is not allowed; expected an integer in [100, inf]"),
    ("split.repeats=2", "unknown config key 'split.repeats'"),
    ("seed=-1", "config seed: -1 is not allowed; expected a non-negative integer"),
    ("train.momentum=1.5", "config train.momentum: 1.5 is not allowed; expected a number in [0, 1)"),
    ("train.momentum=banana", "config train.momentum: 'banana' is not allowed; expected a number in [0, 1)"),
    ("sweep.tol=-1", "config sweep.tol: -1 is not allowed; expected a positive number"),
    ("sweep.permutations=abc", "config sweep.permutations: 'abc' is not allowed; expected a positive integer"),
    ("ray.max_retries=-5", "config ray.max_retries: -5 is not allowed; expected a non-negative integer"),
    ("train.gamma=0", "config train.gamma: 0 is not allowed; expected a number in (0, 1]"),
    ("train.milestones=[10, -2]", "config train.milestones: [10, -2] is not allowed; expected a list, each a positive integer"),
    ("train.augment=maybe", "config train.augment: 'maybe' is not allowed; expected true or false"),
    ("dataset.std=[0.5, 0]", "config dataset.std: [0.5, 0] is not allowed; expected a non-empty list, each a positive number or null"),
    ("attack.transform=log", "config attack.transform: 'log' is not allowed; expected one of signed-log, none"),
    ("attack.name=shadow", "config attack.name: 'shadow' is not allowed; expected one of logistic, nasr"),
    ("sweep.players={a: []}", "config sweep.players: {'a': []} is not allowed; expected one of layers, groups, or a mapping {player: [layer, ...]}"),
    ("features.layers=[]", "config features.layers: [] is not allowed; expected a non-empty list, each a layer name or null"),
    ("ray.num_cpus=0", "config ray.num_cpus: 0 is not allowed; expected a positive integer or null"),
    ("sweep.max_exact_players=31", "config sweep.max_exact_players: 31 is not allowed; expected an integer in [1, 30]"),
    ("model.options=[1]", "config model.options: [1] is not allowed; expected a mapping {option: value}"),
    ("output.dir=''", "config output.dir: '' is not allowed; expected a path"),
    ("train=5", "config train: expected a section (a mapping of epochs, batch_size"),
    ("seed.x=1", "--set seed.x: 'seed' is not a section"),
    ("model.options={depth: ", "--set 'model.options={depth: ': the value is not valid YAML (line 1, column 9: expected the node content"),
    ("train", "expected key.path=value"),
])
def test_validation_errors_name_the_key(override, msg):
    with pytest.raises(LayerleakError) as e:
        presets.load(None, [override])
    assert msg in str(e.value) and "\n" not in str(e.value)


def test_every_key_has_a_rule():
    """Each of the config's keys is checked: a key added without a rule fails here (and at load)."""
    def keys(obj, where=""):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                yield from keys(value, f"{where}{f.name}.")
            else:
                assert isinstance(f.metadata.get("rule"), Rule), f"{where}{f.name} declares no rule"
                yield where + f.name
    assert len(list(keys(Config()))) > 50  # the walk reached every section


def test_numbers_written_as_yaml_strings_are_read():
    cfg = presets.load(None, ["attack.C=1e-3", "train.lr=5e-2", "sweep.tol=1e-4"])
    assert cfg.attack.C == 0.001 and cfg.train.lr == 0.05 and cfg.sweep.tol == 1e-4


@pytest.mark.parametrize("text,msg", [
    ("- seed: 0\n- model: cnn\n", "the top level must be a mapping of sections (seed, dataset, model"),
    ("just a string\n", "the top level must be a mapping of sections"),
    ("seed: 0\ntrain:\n  epochs: [1, 2\n  lr: 0.1\n", "is not valid YAML: line 4, column 5"),
    ("seed: 0\ntrain:\n\tepochs: 3\n", "is not valid YAML: line 3, column 1: found character '\\t' that cannot start any token"),
])
def test_bad_config_files(tmp_path, text, msg):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(LayerleakError) as e:
        load_config(path)
    assert msg in str(e.value) and str(path) in str(e.value) and "\n" not in str(e.value), str(e.value)


def test_missing_config_file():
    with pytest.raises(LayerleakError, match="config file .*nope.yaml not found"):
        load_config("nope.yaml")
    with pytest.raises(LayerleakError, match="config file nope not found: give a path or a preset name .*default.yaml"):
        presets.resolve("nope")


def test_presets_are_found_by_name_or_path(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # from anywhere, not only a checkout's root
    assert presets.resolve(None).name == "default.yaml" and presets.resolve(None).is_file()
    assert presets.resolve("cifar100-cnn") == presets.resolve("cifar100-cnn.yaml")
    own = tmp_path / "default.yaml"
    own.write_text("seed: 5\n")
    assert presets.resolve("default.yaml").resolve() == own  # an existing file wins over the preset of that name
    assert presets.load(str(own)).seed == 5


def test_hashes_are_stable_and_stage_specific():
    base = stage_hashes(presets.load())
    assert base == stage_hashes(presets.load())
    sweep_only = stage_hashes(presets.load(None, ["sweep.chunk_size=7", "sweep.players=groups"]))
    assert sweep_only["features"] == base["features"] and sweep_only["sweep"] != base["sweep"]
    paths_only = stage_hashes(presets.load(None, ["output.dir=/elsewhere", "features.batch_size=3", "ray.fit_actors=5"]))
    assert paths_only == base  # where and how fast results are made does not change them
    seed = stage_hashes(presets.load(None, ["seed=1"]))
    assert all(seed[s] != base[s] for s in ("splits", "target", "features", "sweep"))

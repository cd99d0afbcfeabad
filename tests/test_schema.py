"""The feature schema: column names built and parsed in one place, constant columns carried to every selection."""

from __future__ import annotations

from collections import OrderedDict

import numpy as np
import pyarrow as pa
import pytest

from mia_tasks import schema
import mia_tasks.config as config_module
from flows.presets import load
from mia_tasks.errors import LayerleakError
from mia_tasks.experiments import Selection, features_view
from mia_tasks.featurestore import load_features, part_name
from mia_tasks.players import player_columns
from mia_tasks.rundir import RunDir, stamp


def test_columns_round_trip_with_dotted_layer_names():
    for kind in schema.LAYER_KINDS:
        for stat in schema.STATS:
            name = schema.column(kind, "layer1.0.conv1", stat)
            assert schema.parse_column(name) == (kind, "layer1.0.conv1", stat)
    assert schema.parse_column(schema.LOSS) == (schema.LOSS, None, None)
    for other in (*schema.ID_COLUMNS, "coalition", "grad.", "grad.l2"):
        assert schema.parse_column(other) == ("", None, None)
    cols = schema.layer_columns(["a", "b.c"])
    assert cols[:7] == [f"grad.a.{s}" for s in schema.STATS] and cols[-1] == "out.b.c.skewness" and len(cols) == 28
    assert schema.layers_in(["sample_id", "loss", *cols]) == ["a", "b.c"]


def test_player_columns_leave_out_constant_columns():
    players = OrderedDict([("early", ["conv1", "conv2"]), ("head", ["fc2"])])
    constant = schema.constant_columns("fc2")
    assert constant == ["grad.fc2.mean"]
    full, less = player_columns(players, ["grad", "out"]), player_columns(players, ["grad", "out"], constant)
    assert [len(c) for c in full] == [28, 14] and [len(c) for c in less] == [28, 13]
    assert less[1] == [c for c in full[1] if c != "grad.fc2.mean"]
    assert schema.constant_columns(None) == []


def test_stage_hashes_carry_the_feature_schema_version(monkeypatch):
    """Old feature parts (another schema) are not current: the features and sweep hashes change with it."""
    cfg = load()
    before = config_module.stage_hashes(cfg)
    monkeypatch.setitem(config_module.CODE_VERSIONS, "feature_schema", schema.SCHEMA_VERSION + 1)
    after = config_module.stage_hashes(cfg)
    assert after["features"] != before["features"] and after["sweep"] != before["sweep"]
    assert after["splits"] == before["splits"] and after["target"] == before["target"]


def test_config_kinds_come_from_the_schema():
    with pytest.raises(LayerleakError, match="sweep.kinds.*'loss'"):
        load(None, ["sweep.kinds=[grad, loss]"])
    assert load(None, ["attack.kinds=[grad, out, loss]"]).attack.kinds == list(schema.FEATURE_KINDS)


def test_loaded_features_carry_their_constant_columns(tmp_path):
    """A part's constant_columns metadata reaches Features, its views and the attack's column selection."""
    rd = RunDir(str(tmp_path))
    ids = np.arange(6)
    cols = {c: np.linspace(1, 2, 6) for c in schema.layer_columns(["fc1", "fc2"], ["grad"])}
    cols["grad.fc2.mean"] = np.zeros(6)
    table = pa.table({schema.SAMPLE_ID: ids, schema.LABEL: ids % 2, schema.MEMBER: ids < 3, schema.LOSS: np.ones(6),
                      **{k: pa.array(v) for k, v in cols.items()}})
    meta = {**stamp("features", {"features": "h"}), "shard": 0, "layers": ["fc1", "fc2"], "params": {"fc1": 8, "fc2": 4},
            "depths": {"fc1": 1, "fc2": 2}, schema.CONSTANT_COLUMNS_KEY: ["grad.fc2.mean"]}
    rd.write_parquet(part_name(0), table, meta)
    features = load_features(rd, "h")
    assert features.constant == ["grad.fc2.mean"]
    view = features_view(features, Selection("last layer", grad=["fc2"]))
    assert view.constant == ["grad.fc2.mean"]
    assert [c for c in view.table.column_names if c.startswith("grad.")] == [f"grad.fc2.{s}" for s in schema.STATS if s != "mean"]

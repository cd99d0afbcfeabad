"""The sweep's pure inputs on small hand-made arrays: the audited pool's matrix, coalition column masks, missing keys."""

from __future__ import annotations

import numpy as np
import pyarrow as pa
import pytest

from mia_tasks.attack_data import attack_data, column_masks, membership, missing_coalitions
from mia_tasks.errors import LayerleakError
from mia_tasks.featurestore import Features
from mia_tasks.splits import Splits


def _splits() -> Splits:
    """Six audited samples in an unsorted id order (as make_splits writes them: members first)."""
    return Splits(np.array([3, 9, 12]), pa.table({
        "sample_id": pa.array([12, 3, 9, 40, 21, 33], pa.int64()),
        "member": pa.array([True, True, True, False, False, False]),
        "label": pa.array([0, 1, 0, 1, 0, 1], pa.int64()),
    }))


def _features() -> Features:
    """Features sorted by sample_id; column a = sample id, b = 10 x sample id, plus one column not asked for."""
    ids = np.array([3, 9, 12, 21, 33, 40])
    return Features(pa.table({"sample_id": pa.array(ids, pa.int64()), "a": ids.astype(float), "b": 10.0 * ids,
                              "c": np.zeros(6)}), ["l1"], {"l1": 1}, {"l1": 1})


def test_membership_follows_the_asked_order():
    np.testing.assert_array_equal(membership(_splits(), np.array([40, 3, 21, 12])), [0, 1, 0, 1])
    assert membership(_splits(), np.array([9])).dtype == np.int64


def test_attack_data_is_the_audited_pool_in_splits_order_untransformed():
    """Every audited sample once, in splits.parquet's order (the order of the stored correctness bits); no
    transform here: cross-fitting fits it inside each fold's training samples."""
    data = attack_data(_features(), _splits(), ["b", "a"])
    np.testing.assert_array_equal(data["X"][:, 1], [12.0, 3.0, 9.0, 40.0, 21.0, 33.0])
    np.testing.assert_array_equal(data["X"][:, 0], 10 * data["X"][:, 1])
    np.testing.assert_array_equal(data["y"], [1, 1, 1, 0, 0, 0])
    assert data["X"].dtype == np.float64 and data["y"].dtype == np.int64


def test_attack_data_refuses_missing_feature_rows():
    f = _features()
    short = Features(f.table.slice(0, 5), f.layers, f.params, f.depths)  # sample 40 has no features
    with pytest.raises(LayerleakError, match="features are missing"):
        attack_data(short, _splits(), ["a"])


def test_column_masks_mark_each_players_block():
    masks = column_masks(np.array([0b001, 0b100, 0b101, 0b111]), [2, 1, 3])
    assert masks.shape == (4, 6) and masks.dtype == bool
    np.testing.assert_array_equal(masks.astype(int), [
        [1, 1, 0, 0, 0, 0],
        [0, 0, 0, 1, 1, 1],
        [1, 1, 0, 1, 1, 1],
        [1, 1, 1, 1, 1, 1],
    ])


def test_column_masks_high_players_use_int64_bits():
    L = 40
    masks = column_masks(np.array([1 << 39], np.int64), [1] * L)
    assert masks[0].sum() == 1 and masks[0, 39]


def test_missing_coalitions_lists_only_absent_keys():
    have = {0: {1: {}, 3: {}}, 1: {c: {} for c in range(1, 8)}}
    missing = missing_coalitions(have, 3, targets=3)
    assert set(missing) == {0, 2}  # target 1 is complete
    np.testing.assert_array_equal(missing[0], [2, 4, 5, 6, 7])
    np.testing.assert_array_equal(missing[2], np.arange(1, 8))
    assert missing[0].dtype == np.int64
    assert missing_coalitions({0: {c: {} for c in range(1, 4)}}, 2) == {}

"""Membership splits: disjoint, balanced, deterministic from the seed; impossible sizes say what is available."""

from __future__ import annotations

import numpy as np
import pytest

from mia_tasks.config import SplitConfig
from mia_tasks.errors import LayerleakError
from mia_tasks.splits import make_splits

TRAIN_Y = np.arange(1000) % 10
TEST_Y = np.arange(300) % 10


def _split(**kw):
    base = dict(members=200, nonmembers=300, audit=150)
    base.update(kw)
    return SplitConfig(**base)


def test_disjoint_balanced_and_within_pools():
    s = make_splits(TRAIN_Y, TEST_Y, _split(), seed=1)
    ids = s.table.column("sample_id").to_numpy()
    member = s.table.column("member").to_numpy(zero_copy_only=False)
    assert len(s.target_members) == 200 and len(np.unique(ids)) == len(ids) == 300
    assert set(ids[member]) <= set(s.target_members)
    assert not set(ids[~member]) & set(s.target_members)
    assert ids.max() < 1000  # a target trained here draws non-members from the rest of the train split
    assert (s.table.column("label").to_numpy() == TRAIN_Y[ids]).all()
    # the audited pool: members first, each side by id; the attacks are cross-fitted over all of it
    assert member[:150].all() and not member[150:].any()
    assert (np.diff(ids[:150]) > 0).all() and (np.diff(ids[150:]) > 0).all()
    np.testing.assert_array_equal(s.sample_ids, ids)
    np.testing.assert_array_equal(s.member, member)


def test_deterministic_from_seed():
    a, b, c = (make_splits(TRAIN_Y, TEST_Y, _split(), seed=s) for s in (3, 3, 4))
    assert a.table.equals(b.table) and np.array_equal(a.target_members, b.target_members)
    assert not a.table.equals(c.table)


def test_pretrained_members_whole_train_split_nonmembers_test_split():
    s = make_splits(TRAIN_Y, TEST_Y, _split(members=None, nonmembers=300), seed=0, pretrained=True)
    ids = s.table.column("sample_id").to_numpy()
    member = s.table.column("member").to_numpy(zero_copy_only=False)
    assert len(s.target_members) == 1000
    assert (ids[~member] >= 1000).all() and (ids[member] < 1000).all()


@pytest.mark.parametrize("kw,msg", [
    (dict(members=800, nonmembers=300), "exceed the 1000 train images available"),
    (dict(audit=250), "exceeds the members \\(200\\)"),
])
def test_impossible_sizes(kw, msg):
    with pytest.raises(LayerleakError, match=msg):
        make_splits(TRAIN_Y, TEST_Y, _split(**kw), seed=0)


def test_pretrained_too_many_nonmembers():
    with pytest.raises(LayerleakError, match="exceeds the 300 samples of the test split"):
        make_splits(TRAIN_Y, TEST_Y, _split(members=None, nonmembers=301), seed=0, pretrained=True)

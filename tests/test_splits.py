"""Membership splits: disjoint, balanced, deterministic from the seed; impossible sizes say what is available."""

from __future__ import annotations

import numpy as np
import pytest

from mia_tasks.config import SplitConfig
from mia_tasks.errors import LayerleakError
from mia_tasks.splits import ROLE_EVAL, ROLE_TRAIN, make_splits

TRAIN_Y = np.arange(1000) % 10
TEST_Y = np.arange(300) % 10


def _split(**kw):
    base = dict(members=200, nonmembers=300, audit=150, attack_train=60, attack_eval=80, repeats=4)
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
    for r in range(4):
        tr, ev = s.ids(r, ROLE_TRAIN), s.ids(r, ROLE_EVAL)
        assert not set(tr) & set(ev)
        assert len(tr) == 120 and len(ev) == 160
        is_member = dict(zip(ids, member))
        assert sum(is_member[i] for i in tr) == 60 and sum(is_member[i] for i in ev) == 80
    assert not np.array_equal(s.ids(0, ROLE_TRAIN), s.ids(1, ROLE_TRAIN))  # repeats resample


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
    (dict(attack_train=100, attack_eval=100), r"exceed the 150 audited samples per side"),
    (dict(audit=250), "exceeds the members \\(200\\)"),
])
def test_impossible_sizes(kw, msg):
    with pytest.raises(LayerleakError, match=msg):
        make_splits(TRAIN_Y, TEST_Y, _split(**kw), seed=0)


def test_pretrained_too_many_nonmembers():
    with pytest.raises(LayerleakError, match="exceeds the 300 samples of the test split"):
        make_splits(TRAIN_Y, TEST_Y, _split(members=None, nonmembers=301), seed=0, pretrained=True)

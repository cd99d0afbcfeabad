"""``layerleak bench train`` (smoke size): every variant trains one epoch and is reported against the plain loop."""

from __future__ import annotations

import json


def test_bench_train_smoke_reports_every_variant_against_the_plain_loop(capsys):
    from flows.bench import train as bench

    assert bench.main(["--quick", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert set(res["variants"]) == {"layerleak", "plain", "channels-last"} and res["rounds"] == 2
    assert res["variants"]["plain"]["time_vs_plain"] == {"median": 1.0, "min": 1.0, "max": 1.0}
    for v in res["variants"].values():
        assert 0 < v["images_per_s"]["min"] <= v["images_per_s"]["median"] <= v["images_per_s"]["max"]
    assert bench.main(["--images", "10"]) == 2

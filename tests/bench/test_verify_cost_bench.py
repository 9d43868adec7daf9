"""bench/verify_cost.py at toy size: the JSON fields are there and sane."""

from helpers import run_bench_toy


def test_verify_cost_toy(tmp_path):
    res = run_bench_toy("verify_cost", tmp_path)
    assert res["bench"] == "verify_cost" and res["toy"]
    assert res["epoch_s_verify_on"] > 0 and res["epoch_s_verify_off"] > 0
    assert res["overhead"] == res["epoch_s_verify_on"] / res["epoch_s_verify_off"] - 1
    assert res["bytes_read"] > 0 and 0 <= res["extra_read_fraction"] < 2

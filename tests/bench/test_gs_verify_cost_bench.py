"""bench/gs_verify_cost.py at toy size: the JSON fields are there and sane."""

from helpers import run_bench_toy


def test_gs_verify_cost_toy(tmp_path):
    res = run_bench_toy("gs_verify_cost", tmp_path)
    assert res["bench"] == "gs_verify_cost" and res["toy"]
    assert res["read_s_verify_on"] > 0 and res["read_s_verify_off"] > 0
    assert res["overhead"] == res["read_s_verify_on"] / res["read_s_verify_off"] - 1
    assert res["bytes_read"] == 4000 * (8 + 3 * 23 * 4) and res["blocks"] == 8
    assert res["crc32_gbps"] > 0

"""bench/loader_cpu.py runs at toy size: both base-read modes read the rows; native AIO
reads rows whose pages touch in one request, so never more bytes than the threads."""

from helpers import load_bench, packed_synthetic

from oocstore.pack import PackOptions


def test_loader_cpu_toy(tmp_path):
    store = packed_synthetic(tmp_path / "s", {
        "fb": PackOptions(cpu_cache=100 * 64, max_disk_blowup=0)})
    store.close()
    bench = load_bench("loader_cpu")
    out = tmp_path / "r.json"
    result = bench.main([str(tmp_path / "s"), "--pack", "fb", "--epochs", "2", "--rounds", "1",
                         "--prefetch", "0", "--out", str(out)])
    med = result["median"]
    assert set(med) == {"aio", "threads"} and out.exists()
    assert 0 < med["aio"]["bytes_read"] <= med["threads"]["bytes_read"]
    assert med["aio"]["prefetch"] == 0 and med["threads"]["cpu_s"] > 0

"""The first-hour budget benchmark runs at toy size, so it cannot rot: plan-budget's
suggestion goes through the printed sample / pack / train commands, out of core and in
memory, with the same losses."""

import json

from helpers import load_bench


def test_first_hour_budget_toy(tmp_path, capsys):
    out = tmp_path / "r.json"
    result = load_bench("first_hour_budget").main(
        ["--toy", "--fractions", "6", "--epochs", "1", "--rounds", "1", "--hidden", "16",
         "--out", str(out)])
    (entry,) = result["results"]
    assert entry["suggestion"]["fits"] and entry["cpu_budget"] == "4500KiB"
    assert [c.split()[1] for c in entry["commands"]] == ["sample", "pack", "train"]
    ooc, mem = entry["runs"]["ooc"][0], entry["runs"]["mem"][0]
    assert ooc["loss"] == mem["loss"] and ooc["test_acc"] == mem["test_acc"]
    assert ooc["peak_rss_bytes"] > 0 and len(ooc["epoch_s"]) == 1
    assert entry["run_cpu_s"]["ooc"] > 0 and entry["ooc_over_mem_cpu"] > 0
    assert entry["ooc_over_mem"] > 0 and entry["packs"]["train"]["min_working_set_cpu"] \
        <= 4500 * 1024
    doc = json.loads(out.read_text())
    assert doc["bench"] == "first_hour_budget" and doc["machine_before"]["cpus"] >= 1
    assert json.loads(capsys.readouterr().out.strip().splitlines()[-1])["bench"] \
        == "first_hour_budget"

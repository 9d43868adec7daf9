"""Leaving the process group: a rank that finished meets its peers at a barrier before the
group is destroyed (gloo aborts a process whose peer closes the connections first); a rank
leaving on an error does not wait for peers that will never come."""

import pytest

from oocstore import distributed as dist
from oocstore.cli import distributed as cli_dist


@pytest.fixture
def fake_group(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "launch_info", lambda env: dist.LaunchInfo(
        rank=0, world_size=2, local_rank=0))
    monkeypatch.setattr(dist, "init_process_group", lambda info, device: ("cpu", True))
    monkeypatch.setattr(dist.torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(dist.torch.distributed, "barrier", lambda: calls.append("barrier"))
    monkeypatch.setattr(dist.torch.distributed, "destroy_process_group",
                        lambda: calls.append("destroy"))
    return calls


def test_finished_rank_waits_for_peers_before_destroying(fake_group):
    with cli_dist.launched("cpu") as info:
        assert info.world_size == 2
        assert fake_group == []
    assert fake_group == ["barrier", "destroy"]


def test_failing_rank_destroys_without_barrier(fake_group):
    with pytest.raises(RuntimeError, match="boom"):
        with cli_dist.launched("cpu"):
            raise RuntimeError("boom")
    assert fake_group == ["destroy"]


def test_destroy_runs_even_when_the_barrier_fails(fake_group, monkeypatch):
    def broken():
        fake_group.append("barrier")
        raise RuntimeError("peer gone")
    monkeypatch.setattr(dist.torch.distributed, "barrier", broken)
    with pytest.raises(RuntimeError, match="peer gone"):
        dist.destroy_process_group()
    assert fake_group == ["barrier", "destroy"]

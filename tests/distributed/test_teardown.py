"""Leaving the process group: a rank that finished meets its peers at a barrier before the
group is destroyed (gloo aborts a process whose peer closes the connections first); a rank
leaving on an error does not wait for peers that will never come."""

import datetime
import os
import socket
import subprocess
import sys
import textwrap

import pytest

from helpers import REPO
from oocstore import distributed as dist
from oocstore.cli import distributed as cli_dist
from oocstore.errors import PeerError


@pytest.fixture
def fake_group(monkeypatch):
    calls = []
    monkeypatch.setattr(dist, "launch_info", lambda env: dist.LaunchInfo(
        rank=0, world_size=2, local_rank=0))
    monkeypatch.setattr(dist, "init_process_group", lambda info, device: ("cpu", True))
    monkeypatch.setattr(dist.torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(dist.torch.distributed, "get_backend", lambda *a: "gloo")
    monkeypatch.setattr(dist.torch.distributed, "get_rank", lambda *a: 0)
    monkeypatch.setattr(dist.torch.distributed, "get_world_size", lambda *a: 2)
    monkeypatch.setattr(dist.torch.distributed, "monitored_barrier",
                        lambda timeout=None, **kw: calls.append(("barrier", timeout)))
    monkeypatch.setattr(dist.torch.distributed, "destroy_process_group",
                        lambda: calls.append("destroy"))
    return calls


def test_finished_rank_waits_for_peers_before_destroying(fake_group):
    with cli_dist.launched("cpu") as info:
        assert info.world_size == 2
        assert fake_group == []
    assert fake_group == [("barrier", datetime.timedelta(seconds=dist.TEARDOWN_TIMEOUT_S)),
                          "destroy"]


def test_failing_rank_destroys_without_barrier(fake_group):
    with pytest.raises(RuntimeError, match="boom"):
        with cli_dist.launched("cpu"):
            raise RuntimeError("boom")
    assert fake_group == ["destroy"]


def test_destroy_runs_even_when_the_barrier_fails(fake_group, monkeypatch):
    def broken(timeout=None, **kw):
        fake_group.append("barrier")
        raise dist.torch.distributed.DistBackendError(
            "[../gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:4242\n"
            "Exception raised from recvBytes at ...")
    monkeypatch.setattr(dist.torch.distributed, "monitored_barrier", broken)
    with pytest.raises(PeerError) as err:
        dist.destroy_process_group()
    assert fake_group == ["barrier", "destroy"]
    message = str(err.value)
    assert "\n" not in message and "rank 0 of 2" in message
    assert "Connection closed by peer" in message and "recvBytes" not in message


def test_the_teardown_wait_is_bounded(fake_group):
    dist.destroy_process_group(timeout_s=7.5)
    assert fake_group == [("barrier", datetime.timedelta(seconds=7.5)), "destroy"]


RANK = textwrap.dedent("""
    import os, sys, time
    from oocstore import distributed as dist
    from oocstore.cli import distributed as cli_dist
    from oocstore.errors import OocError
    dist.TEARDOWN_TIMEOUT_S = 20.0
    t0 = time.monotonic()
    try:
        with cli_dist.launched("cpu"):
            if os.environ["RANK"] == "1":
                raise SystemExit(3)  # this rank fails; rank 0 finishes
    except OocError as err:
        print(f"{type(err).__name__}: {err}")
        print(f"left after {time.monotonic() - t0:.1f} s")
        sys.exit(2)
    print("finished")
""")


def test_a_finished_rank_whose_peer_failed_says_so_in_one_line(tmp_path):
    """Two gloo ranks: rank 1 fails, rank 0 finishes and meets nobody at the teardown
    barrier. Rank 0 leaves with a PeerError (an OocError: the CLI prints it as one line
    and exits with status 2) instead of a gloo traceback or the group's 30 min wait."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    procs = []
    for rank in (0, 1):
        env = {**os.environ, "RANK": str(rank), "WORLD_SIZE": "2", "LOCAL_RANK": str(rank),
               "MASTER_ADDR": "127.0.0.1", "MASTER_PORT": str(port), "OMP_NUM_THREADS": "1",
               "PYTHONPATH": str(REPO)}
        procs.append(subprocess.Popen([sys.executable, "-c", RANK], env=env, cwd=REPO,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                      text=True))
    (out0, err0), (_, _) = (p.communicate(timeout=120) for p in procs)
    assert procs[1].returncode == 3
    assert procs[0].returncode == 2, err0[-2000:]
    assert out0.startswith("PeerError: rank 0 of 2 finished, but another rank failed"), out0
    assert "Traceback" not in err0

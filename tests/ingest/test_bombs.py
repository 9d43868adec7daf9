"""Memory bombs: small source files that would make ingest allocate gigabytes. Each is
refused with a SourceError naming the file and the size before anything that large is
allocated. The crafted files are tiny; every load runs in a forked child whose address
space is capped (RLIMIT_AS), so a regression fails the test instead of using the RAM."""

from __future__ import annotations

import copyreg
import multiprocessing as mp
import pickle
import resource
import zipfile

import numpy as np
import pytest
import scipy.sparse as sp

from oocstore.errors import SourceError
from oocstore.ingest.common import load_pickle

_CTX = mp.get_context("fork")
GIB3 = 3 << 30


class _Reduce:
    """Pickles as ``func(*args)`` (then ``__setstate__(state)``), nothing allocated here."""

    def __init__(self, func, args, state=None):
        self.func, self.args, self.state = func, args, state

    def __reduce__(self):
        return (self.func, self.args) if self.state is None else (self.func, self.args, self.state)


def _reconstruct():
    from numpy._core.multiarray import _reconstruct as rec

    return rec


PICKLE_BOMBS = {
    "bytearray(3 GiB)": lambda: _Reduce(bytearray, (GIB3,)),
    "bytes(3 GiB)": lambda: _Reduce(bytes, (GIB3,)),
    "copyreg._reconstructor(bytearray, 3 GiB)": lambda: _Reduce(
        copyreg._reconstructor, (bytearray, bytearray, GIB3)),
    "numpy _reconstruct 3 GiB": lambda: _Reduce(_reconstruct(), (np.ndarray, (GIB3,), b"b")),
    "ndarray(3 GiB)": lambda: _Reduce(np.ndarray, ((GIB3,), np.uint8)),
    "object array state of 10^9 items": lambda: _Reduce(
        _reconstruct(), (np.ndarray, (0,), b"b"), (1, (10**9,), np.dtype("O"), False, [1, 2])),
    "float array state larger than its data": lambda: _Reduce(
        _reconstruct(), (np.ndarray, (0,), b"b"), (1, (GIB3,), np.dtype("f8"), False, b"x" * 8)),
    "csr_matrix((3 G, 1))": lambda: _Reduce(sp.csr_matrix, ((GIB3, 1),)),
    "bytes.__new__ 3 GiB (NEWOBJ)": lambda: (  # bytes.__new__(bytes, 3 GiB), raw opcodes
        b"\x80\x02c__builtin__\nbytes\n" + pickle.LONG1 + bytes([5]) + GIB3.to_bytes(5, "little")
        + pickle.TUPLE1 + pickle.NEWOBJ + pickle.STOP),
}


def _capped(fn, *args):
    """Run ``fn(*args)`` in a child with at most ~1 GiB more address space than now;
    returns ``("ok", repr)`` or ``(exception type, message)``."""
    q = _CTX.Queue()

    def child():
        with open("/proc/self/statm") as f:
            vsize = int(f.read().split()[0]) * resource.getpagesize()
        resource.setrlimit(resource.RLIMIT_AS, (vsize + (1 << 30), resource.RLIM_INFINITY))
        try:
            out = fn(*args)
            q.put(("ok", repr(out)[:200]))
        except BaseException as err:  # noqa: BLE001 - reported to the parent
            q.put((type(err).__name__, str(err)))

    p = _CTX.Process(target=child)
    p.start()
    p.join(120)
    assert p.exitcode == 0, f"the child died with exit code {p.exitcode}"
    return q.get(timeout=5)


def _load(path):
    with open(path, "rb") as f:
        return load_pickle(f, path)


@pytest.mark.parametrize("name", sorted(PICKLE_BOMBS))
@pytest.mark.parametrize("protocol", [2, 4])
def test_pickle_bombs_are_refused(tmp_path, name, protocol):
    path = tmp_path / "ind.x.allx"
    bomb = PICKLE_BOMBS[name]()
    path.write_bytes(bomb if isinstance(bomb, bytes) else pickle.dumps(bomb, protocol=protocol))
    assert path.stat().st_size < 300
    kind, msg = _capped(_load, path)
    assert kind == "SourceError", (kind, msg)
    assert str(path) in msg and "bomb" in msg, msg


def test_genuine_pickles_still_load(tmp_path):
    obj = {"a": np.arange(1000, dtype=np.float32), "m": sp.random(50, 40, density=0.1,
                                                                   format="csr", random_state=0),
           "o": np.array(sp.eye(3), dtype=object), "b": bytearray(b"xyz"), "t": (1, 2.5, "s")}
    for protocol in (2, 4):
        path = tmp_path / f"p{protocol}"
        path.write_bytes(pickle.dumps(obj, protocol=protocol))
        got = _load(path)
        assert np.array_equal(got["a"], obj["a"]) and (got["m"] != obj["m"]).nnz == 0
        assert got["b"] == obj["b"] and got["t"] == obj["t"]
        assert type(got["a"]) is np.ndarray and type(got["o"]) is np.ndarray


def _deflated_npz(path, member: str, nbytes: int) -> None:
    """An .npz whose float32 member declares ``nbytes`` of zeros: a few hundred KiB on
    disk, written without ever holding the member in memory."""
    header = {"descr": "<f4", "fortran_order": False, "shape": (nbytes // 4,)}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as z:
        with z.open(member + ".npy", "w", force_zip64=True) as w:
            np.lib.format.write_array_header_1_0(w, header)
            zeros = bytes(1 << 20)
            for _ in range(nbytes >> 20):
                w.write(zeros)


def test_npz_member_inflating_a_thousandfold_is_refused(tmp_path):
    from oocstore.ingest.npz import npz_source

    path = tmp_path / "g.npz"
    _deflated_npz(path, "attr_matrix", 256 << 20)
    assert path.stat().st_size < 2 << 20
    kind, msg = _capped(lambda: npz_source(path, trust_pickle=False))
    assert kind == "SourceError", (kind, msg)
    assert "attr_matrix" in msg and "inflate to" in msg, msg


def test_feature_rows_wider_than_a_block_are_refused(tmp_path):
    """A sparse feature matrix declaring 2^32 columns: one dense row would be 16 GiB."""
    from oocstore.ingest import build_store
    from oocstore.ingest.common import GraphSource, iter_blocks

    wide = sp.csr_matrix((np.ones(2, np.float32), ([0, 1], [0, 5])), shape=(2, 1 << 32))
    g = GraphSource(num_nodes=2, src=np.array([0]), dst=np.array([1]), directed=False,
                    features=iter_blocks(wide), feat_dim=1 << 32,
                    labels=np.zeros(2, dtype=np.int64), where="wide.npz")
    kind, msg = _capped(build_store, tmp_path / "s", g)
    assert kind == "SourceError", (kind, msg)
    assert "wide.npz" in msg and str(1 << 32) in msg, msg
    assert not (tmp_path / "s").exists()


@pytest.mark.parametrize("data", [b"\x80\x02J\xd4\x1d", b"\x80\x02K", b"\x80\x04\x95\x05"])
def test_truncated_binary_opcodes_are_source_errors(tmp_path, data):
    """The checked unpickler reads opcodes in Python: a cut binary argument is a
    SourceError like any other truncation (found by tools/fuzz_inputs.py)."""
    path = tmp_path / "p"
    path.write_bytes(data)
    with pytest.raises(SourceError, match="truncated or corrupt"):
        _load(path)

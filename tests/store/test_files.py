import errno
import os
import zlib

import numpy as np
import pytest

from oocstore.errors import DiskFullError
from oocstore.store import files
from oocstore.store.files import (ArrayFileWriter, DirectReader, aligned_empty, checksum, evict,
                                  raise_disk_error)
from oocstore.store.format import ALIGN, align_up

from helpers import FullAfter


def test_checksum_matches_zlib(rng):
    a = rng.standard_normal((100, 7)).astype(np.float32)
    assert checksum(a) == zlib.crc32(a.tobytes())
    assert checksum(a[:, 2]) == zlib.crc32(np.ascontiguousarray(a[:, 2]).tobytes())
    assert checksum(b"abc") == zlib.crc32(b"abc")
    assert checksum(np.zeros((0, 8))) == 0 == checksum(b"")
    assert checksum(np.arange(6, dtype=np.int16).reshape(2, 3)[::-1]) == zlib.crc32(
        np.arange(6, dtype=np.int16).reshape(2, 3)[::-1].tobytes())


@pytest.mark.parametrize("chunk", [1000, 4096])
def test_writer_checksums_per_chunk_across_odd_appends(tmp_path, rng, chunk):
    data = rng.integers(0, 256, size=23_457, dtype=np.uint8)
    w = ArrayFileWriter(tmp_path / "a.1.bin", chunk_bytes=chunk)
    pos = 0
    for size in [1, 999, 1001, 3, 2500, 7, chunk, chunk - 1, 5000]:
        w.write(data[pos:pos + size])
        pos += size
    w.write(data[pos:].tobytes())  # bytes work too
    w.finish()
    expect = [zlib.crc32(data[i:i + chunk].tobytes()) for i in range(0, data.size, chunk)]
    assert w.checksums == expect
    assert w.nbytes == data.size
    raw = (tmp_path / "a.1.bin").read_bytes()
    assert len(raw) == align_up(data.size) and len(raw) % ALIGN == 0
    assert raw[:data.size] == data.tobytes()
    assert raw[data.size:] == bytes(len(raw) - data.size)  # zero padding
    assert not (tmp_path / "a.1.bin.tmp").exists()


def test_writer_exact_chunk_multiple_and_empty(tmp_path):
    w = ArrayFileWriter(tmp_path / "x.bin", chunk_bytes=4096)
    w.write(bytes(8192))
    w.finish()
    assert len(w.checksums) == 2 and (tmp_path / "x.bin").stat().st_size == 8192
    e = ArrayFileWriter(tmp_path / "e.bin")
    e.finish()
    assert e.checksums == [] and (tmp_path / "e.bin").stat().st_size == ALIGN


def test_writer_final_name_only_after_finish(tmp_path):
    w = ArrayFileWriter(tmp_path / "sub" / "a.bin")
    w.write(b"x" * 10)
    assert (tmp_path / "sub" / "a.bin.tmp").exists() and not (tmp_path / "sub" / "a.bin").exists()
    w.finish()
    assert (tmp_path / "sub" / "a.bin").exists()


def test_abort_removes_tmp_and_is_idempotent(tmp_path):
    w = ArrayFileWriter(tmp_path / "a.bin")
    w.write(b"x" * 10_000)
    w.abort()
    w.abort()
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("err", [errno.ENOSPC, errno.EFBIG, errno.EDQUOT])
def test_disk_full_mid_write_removes_tmp_and_names_file(tmp_path, monkeypatch, err):
    state = {"limit": 5000, "written": 0}
    real_open = open
    monkeypatch.setattr(files, "open", lambda *a, **k: FullAfter(real_open(*a, **k), state, err),
                        raising=False)
    w = ArrayFileWriter(tmp_path / "big.3.bin", chunk_bytes=4096)
    w.write(bytes(4000))
    with pytest.raises(DiskFullError, match=r"disk full while writing .*big\.3\.bin.*free space") as ei:
        w.write(bytes(4000))
    assert ei.value.errno == err
    assert isinstance(ei.value, OSError)
    assert list(tmp_path.iterdir()) == []
    w.abort()  # a later abort (from the transaction) is harmless


def test_other_os_errors_pass_through(tmp_path):
    with pytest.raises(PermissionError):
        raise_disk_error(PermissionError(errno.EACCES, "denied"), tmp_path / "x")


def test_aligned_empty_is_page_aligned_and_zeroed():
    for n in (1, 4095, 4097, 1 << 20):
        b = aligned_empty(n)
        assert b.ctypes.data % ALIGN == 0 and b.nbytes >= n and b.nbytes % ALIGN == 0
        assert not b.any()
    assert aligned_empty(16, np.float32).dtype == np.float32


@pytest.fixture
def data_file(tmp_path, rng):
    data = rng.integers(0, 256, size=3 * ALIGN + 123, dtype=np.uint8)
    w = ArrayFileWriter(tmp_path / "d.bin")
    w.write(data)
    w.finish()
    return tmp_path / "d.bin", data


def _check_reads(reader, data):
    for off, n in [(0, 1), (1, 10), (4095, 2), (ALIGN, ALIGN), (100, 3 * ALIGN), (5000, 7000),
                   (0, data.size)]:
        got = reader.read(off, n)
        assert got.tobytes() == data[off:off + n].tobytes(), (off, n)
    tail = reader.read(reader.size - 3, 100)  # short at end of file (the zero padding)
    assert tail.size == 3 and not tail.any()
    buf = aligned_empty(2 * ALIGN)
    assert reader.read_into(buf, ALIGN) == 2 * ALIGN
    assert buf.tobytes() == data[ALIGN:3 * ALIGN].tobytes()


def test_direct_reader_unaligned_ranges(data_file):
    path, data = data_file
    with DirectReader(path) as r:
        # /tmp is ext4 here; elsewhere (tmpfs) the reader falls back and says why.
        assert r.direct or r.fallback_reason
        if r.direct:
            assert r.fallback_reason is None
        assert r.size == align_up(data.size)
        _check_reads(r, data)


def test_buffered_when_asked(data_file):
    path, data = data_file
    with DirectReader(path, direct=False) as r:
        assert not r.direct and "direct=False" in r.fallback_reason
        _check_reads(r, data)
        assert r.read(3, 5).tobytes() == data[3:8].tobytes()


def test_fallback_when_filesystem_refuses_o_direct(data_file, monkeypatch):
    path, data = data_file
    real_open = os.open
    o_direct = getattr(os, "O_DIRECT", 0)
    if not o_direct:
        pytest.skip("no O_DIRECT on this platform")

    def refusing_open(p, flags, *a):
        if flags & o_direct:
            raise OSError(errno.EINVAL, "Invalid argument")
        return real_open(p, flags, *a)

    monkeypatch.setattr(files.os, "open", refusing_open)
    with DirectReader(path) as r:
        assert not r.direct and "not supported on the filesystem" in r.fallback_reason
        assert str(path) in r.fallback_reason
        _check_reads(r, data)


def test_fallback_when_platform_lacks_o_direct(data_file, monkeypatch):
    path, data = data_file
    monkeypatch.setattr(files, "_O_DIRECT", 0)
    with DirectReader(path) as r:
        assert not r.direct and "not available on this platform" in r.fallback_reason
        _check_reads(r, data)


def test_reader_close_idempotent_and_missing_file(tmp_path, data_file):
    r = DirectReader(data_file[0])
    r.close()
    r.close()
    with pytest.raises(FileNotFoundError):
        DirectReader(tmp_path / "nope.bin")


def test_evict_runs(data_file):
    evict(data_file[0])


def test_large_writes_stream_to_disk_as_they_go(tmp_path, monkeypatch):
    """Every WRITEBACK_BYTES the writer hands what it wrote to writeback (and drops the
    pages sent the time before); the ranges advised cover the file in order, and the
    bytes are intact."""
    monkeypatch.setattr(files, "WRITEBACK_BYTES", 64 << 10)
    calls = []
    real = os.posix_fadvise

    def spy(fd, offset, length, advice):
        calls.append((offset, length, advice))
        return real(fd, offset, length, advice)

    monkeypatch.setattr(os, "posix_fadvise", spy)
    rng = np.random.default_rng(0)
    data = rng.integers(0, 256, 1 << 20, dtype=np.uint8)
    w = ArrayFileWriter(tmp_path / "a.bin")
    for piece in np.array_split(data, 37):
        w.write(piece)
    w.finish()
    assert len(calls) >= 10 and all(a == os.POSIX_FADV_DONTNEED for *_, a in calls)
    ends = [o + n for o, n, _ in calls]
    assert ends == sorted(ends) and ends[-1] <= data.size
    # each call starts where the previous call's new range began: nothing is skipped
    assert calls[0][0] == 0
    assert all(calls[i + 1][0] == ends[i - 1] if i else calls[1][0] == 0
               for i in range(len(calls) - 1))
    assert np.array_equal(np.fromfile(tmp_path / "a.bin", dtype=np.uint8)[:data.size], data)
    assert w.checksums == [zlib.crc32(data[i:i + w.chunk_bytes])
                           for i in range(0, data.size, w.chunk_bytes)]


def test_aligned_buffers_are_private_to_a_forked_child():
    """A child that writes into an inherited read buffer must not change the parent's
    (segment and tier buffers are aligned_empty; a shared mapping would mix batches)."""
    buf = aligned_empty(4096)
    buf[0] = 1
    pid = os.fork()
    if pid == 0:
        buf[0] = 2
        os._exit(0)
    _, status = os.waitpid(pid, 0)
    assert status == 0
    assert buf[0] == 1


def test_checksum_without_isal_is_zlibs_value():
    """Where ISA-L is not installed the checksum falls back to zlib's: the same values,
    whole and in pieces, so stores written by either read back under the other."""
    import subprocess
    import sys
    from pathlib import Path

    code = (
        "import sys, zlib\n"
        "sys.modules['isal'] = None; sys.modules['isal.isal_zlib'] = None\n"
        "import numpy as np\n"
        "from oocstore.store import files\n"
        "assert files.CRC32_IMPL == 'zlib', files.CRC32_IMPL\n"
        "a = np.random.default_rng(0).integers(0, 256, 3 * (1 << 20) + 5, dtype=np.uint8)\n"
        "for n in (0, 1, 4096, a.size):\n"
        "    h = n // 3\n"
        "    print(files.checksum(a[:n]), files.checksum(a[h:n], files.checksum(a[:h])))\n")
    root = Path(__file__).resolve().parents[2]
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=root, env={**os.environ, "PYTHONPATH": str(root)},
                         check=True).stdout.split()
    a = np.random.default_rng(0).integers(0, 256, 3 * (1 << 20) + 5, dtype=np.uint8)
    expect = []
    for n in (0, 1, 4096, a.size):
        expect += [str(checksum(a[:n]))] * 2
    assert out == expect

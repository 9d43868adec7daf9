import numpy as np
import pytest

from conftest import make_params
from oocstore.errors import SourceError
from oocstore.gs import layout
from oocstore.gs.ply import read_ply, write_ply

REQ = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1", "scale_2",
       "rot_0", "rot_1", "rot_2", "rot_3"]


def _header(n, props, fmt="binary_little_endian", types=None):
    types = types or {}
    lines = ["ply", f"format {fmt} 1.0", "comment made by a test", f"element vertex {n}"]
    lines += [f"property {types.get(p, 'float')} {p}" for p in props]
    return ("\n".join(lines + ["end_header"]) + "\n").encode()


def _props(degree, normals=True):
    k = layout.num_sh_coeffs(degree)
    return (["x", "y", "z"] + (["nx", "ny", "nz"] if normals else []) + ["f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * (k - 1))]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


@pytest.mark.parametrize("degree", [0, 1, 2, 3])
def test_round_trip(tmp_path, degree):
    params = make_params(257, degree, seed=degree)
    write_ply(tmp_path / "a.ply", params, degree)
    got, deg = read_ply(tmp_path / "a.ply")
    assert deg == degree and got.dtype == np.float32 and np.array_equal(got, params)


def test_inria_channel_major_rest(tmp_path):
    """f_rest_* are channel-major: f_rest_0..2 are red's coefficients 1..3 (degree 1)."""
    props = _props(1, normals=False)
    row = np.arange(len(props), dtype="<f4")
    row[props.index("rot_0")] = 1
    (tmp_path / "a.ply").write_bytes(_header(1, props) + row.tobytes())
    params, deg = read_ply(tmp_path / "a.ply")
    sh = layout.split_params(params, 1)["sh"][0]  # [K=4, 3]
    rest = {p: row[i] for i, p in enumerate(props)}
    assert sh[0].tolist() == [rest["f_dc_0"], rest["f_dc_1"], rest["f_dc_2"]]
    assert sh[1:, 0].tolist() == [rest["f_rest_0"], rest["f_rest_1"], rest["f_rest_2"]]  # red
    assert sh[1:, 2].tolist() == [rest["f_rest_6"], rest["f_rest_7"], rest["f_rest_8"]]  # blue


def test_ascii_big_endian_and_double(tmp_path):
    params = make_params(5, 0)
    write_ply(tmp_path / "ref.ply", params, 0)
    ref, _ = read_ply(tmp_path / "ref.ply")
    props = _props(0)
    table = np.zeros((5, len(props)))
    for i, p in enumerate(props):
        if p in ("nx", "ny", "nz"):
            continue
        j = {"x": 0, "y": 1, "z": 2, "rot_0": 3, "rot_1": 4, "rot_2": 5, "rot_3": 6, "scale_0": 7,
             "scale_1": 8, "scale_2": 9, "opacity": 10, "f_dc_0": 11, "f_dc_1": 12, "f_dc_2": 13}[p]
        table[:, i] = ref[:, j]
    body = "\n".join(" ".join(repr(float(np.float32(v))) for v in r) for r in table) + "\n"
    (tmp_path / "a.ply").write_bytes(_header(5, props, "ascii") + body.encode())
    assert np.array_equal(read_ply(tmp_path / "a.ply")[0], ref)
    (tmp_path / "b.ply").write_bytes(_header(5, props, "binary_big_endian",
                                             {p: "double" for p in props}) + table.astype(">f8").tobytes())
    assert np.array_equal(read_ply(tmp_path / "b.ply")[0], ref)


def _write_raw(tmp_path, props, n, rows=None, fmt="binary_little_endian"):
    rows = np.ones((n, len(props)), "<f4") if rows is None else rows
    path = tmp_path / "bad.ply"
    path.write_bytes(_header(n, props, fmt) + rows.astype("<f4").tobytes())
    return path


def test_missing_properties(tmp_path):
    props = [p for p in _props(0) if p != "opacity"]
    with pytest.raises(SourceError, match="bad.ply: vertex properties lack opacity"):
        read_ply(_write_raw(tmp_path, props, 3))


def test_sh_count_inconsistent(tmp_path):
    props = _props(1) + ["f_rest_9"]
    with pytest.raises(SourceError, match="10 f_rest_\\* properties match no SH degree"):
        read_ply(_write_raw(tmp_path, props, 3))
    props = [p if p != "f_rest_8" else "f_rest_11" for p in _props(1)]
    with pytest.raises(SourceError, match="not numbered 0..8"):
        read_ply(_write_raw(tmp_path, props, 3))


def test_nan_and_zero_quaternion(tmp_path):
    props = _props(0)
    rows = np.ones((4, len(props)), "<f4")
    rows[2, props.index("scale_1")] = np.nan
    with pytest.raises(SourceError, match="Gaussian 2 has nan in scale_1"):
        read_ply(_write_raw(tmp_path, props, 4, rows))
    rows[2, props.index("scale_1")] = 1
    rows[3, [props.index(f"rot_{i}") for i in range(4)]] = 0
    with pytest.raises(SourceError, match="Gaussian 3 has a zero rotation quaternion"):
        read_ply(_write_raw(tmp_path, props, 4, rows))


def test_truncated_and_absurd_counts(tmp_path):
    props = _props(0)
    path = _write_raw(tmp_path, props, 10)
    path.write_bytes(path.read_bytes()[:-7])
    with pytest.raises(SourceError, match="declares 10 vertices .* truncated"):
        read_ply(path)
    # a header claiming 10^12 vertices is refused before anything is allocated
    path.write_bytes(_header(10 ** 12, props) + b"\0" * 100)
    with pytest.raises(SourceError, match="1,000,000,000,000 vertices"):
        read_ply(path)
    path.write_bytes(_header(10 ** 12, props, "ascii") + b"1 " * 50)
    with pytest.raises(SourceError, match="truncated or the vertex count is wrong"):
        read_ply(path)
    path.write_bytes(_header(10 ** 15, props))
    with pytest.raises(SourceError, match="absurd"):
        read_ply(path)
    path.write_bytes(_header(3, props)[:40])
    with pytest.raises(SourceError, match="no 'end_header'"):
        read_ply(path)


def test_ascii_bad_rows(tmp_path):
    props = _props(0)
    path = tmp_path / "a.ply"
    good = " ".join(["1"] * len(props))
    path.write_bytes(_header(3, props, "ascii") + f"{good}\n{good} 7\n{good}\n".encode())
    with pytest.raises(SourceError, match="vertex 1 has 18 values, expected 17"):
        read_ply(path)
    path.write_bytes(_header(3, props, "ascii") + f"{good}\n{good}\n".encode())
    with pytest.raises(SourceError, match="truncated"):
        read_ply(path)
    bad = good.replace("1", "x", 1)
    path.write_bytes(_header(2, props, "ascii") + f"{good}\n{bad}\n".encode())
    with pytest.raises(SourceError, match="vertex 1 holds a value that is not a number"):
        read_ply(path)


def test_not_ply(tmp_path):
    (tmp_path / "a.ply").write_bytes(b"hello")
    with pytest.raises(SourceError, match="not a PLY file"):
        read_ply(tmp_path / "a.ply")
    with pytest.raises(SourceError, match="does not exist"):
        read_ply(tmp_path / "none.ply")


# Fuzzing of the header parser and of damaged files: component "ply" of
# tools/fuzz_inputs.py (tests/reliability/test_fuzz.py runs it).

"""Fuzz the parsers of untrusted input: SNAP edge lists, ``.npz`` archives, Planetoid
files, the catalog's JSON entries, 3DGS ``.ply`` files and COLMAP text models.

Every input must either parse or fail with one of the project's own errors
(:class:`oocstore.errors.OocError` subclasses); anything else — another exception, a
warning (numpy overflow and the like: errors here, as in the test suite), a crash, a
hang past ``--deadline-ms`` — is a finding. Inputs are generated with hypothesis
(structured mutations of valid files, plus raw bytes), deterministically for a seed.
What parses goes on through the rest of ingest: a store is built from every parsed
graph input, a scene from every parsed ``.ply`` (whose parameters must read back
unchanged), and a scene with every parsed COLMAP model as its cameras.

    python tools/fuzz_inputs.py --examples 2000          # per component
    python tools/fuzz_inputs.py --only npz --examples 500
    python tools/fuzz_inputs.py --hostile-catalog 300     # the table + 300 random values

Prints one line per component (inputs tried, parsed, clean errors, findings) and exits
1 on any finding. ``tests/reliability/test_fuzz.py`` runs the same targets with a few
hundred inputs.

``.ply`` inputs: token soup after "ply", headers built like real ones and then mutated
(properties dropped, renamed, duplicated, retyped; other elements before and after the
vertices; vertex counts off by one or absurd) with bodies in all three formats that fit
or not, valid files with flipped bytes and cut ends, and raw bytes. COLMAP inputs: token
soup, valid models (every camera model) with hostile tokens, dropped / duplicated /
swapped lines, cut ends, stray bytes, CRLF and byte-order marks, and raw bytes;
``points3D.txt`` is fuzzed alongside (read by the photo ingest's model reader).

Photo datasets: binary COLMAP models (valid ones with flipped bytes, extreme counts,
ids, model ids, sizes and NaN doubles written over them, cut or extended files, raw
bytes) and ``transforms.json`` files (keys dropped or given hostile values, globally and
per frame, matrix entries replaced, frames duplicated or dropped, cut JSON) with their
images (RGB, RGBA, grayscale PNGs, some cut, flipped or replaced by random bytes) go
through ``ingest_photos`` whole; a scene that results must have finite cameras and
every image readable with its checksum.
"""

from __future__ import annotations

import argparse
import gzip
import io
import json
import pickle
import sys
import tempfile
import time
import warnings
import zipfile
import zlib
from collections import Counter
from pathlib import Path

import numpy as np
from hypothesis import HealthCheck, given, settings, strategies as st

REPO = Path(__file__).resolve().parents[1]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from oocstore.errors import OocError  # noqa: E402

# -- edge lists --------------------------------------------------------------------------

_TOKENS = st.sampled_from(["0", "1", "2", "17", "-3", "99999999999999999999", "1e3", "0x10",
                           "#", "% c", "a", "\t", " ", "", "3.5", "4294967296", "١", "\x00"])
_LINE = st.lists(_TOKENS, min_size=0, max_size=4).map(" ".join)
EDGELIST = st.one_of(
    st.lists(_LINE, max_size=40).map(lambda ls: "\n".join(ls).encode("utf-8", "replace")),
    st.binary(max_size=300),
    st.lists(st.tuples(st.integers(0, 50), st.integers(0, 50)), max_size=60)
    .map(lambda es: "".join(f"{a}\t{b}\n" for a, b in es).encode()),
)


def fuzz_edgelist(data: bytes, tmp: Path, gz: bool) -> str:
    from oocstore.ingest.edgelist import edgelist_source

    path = tmp / ("e.txt.gz" if gz else "e.txt")
    path.write_bytes(gzip.compress(data) if gz else data)
    src = edgelist_source(path, directed=False, feat_dim=4, classes=2, features=None,
                          labels=None, seed=0)
    _build(src, tmp)
    return "parsed"


def _build(src, tmp: Path) -> None:
    from oocstore.ingest import build_store

    build_store(tmp / "store", src, overwrite=True)


# -- npz ---------------------------------------------------------------------------------

_DTYPES = st.sampled_from(["<f4", "<f8", "<i8", "<i4", "|u1", "|b1", "|O", "<c16", ">i4",
                           "<U3", "|V4"])
_SHAPE = st.lists(st.one_of(st.integers(0, 6), st.just(10**15), st.just(2**31)),
                  min_size=0, max_size=3)


def _npy_bytes(dtype: str, shape, fortran: bool, payload: bytes, header_junk: bool) -> bytes:
    header = {"descr": dtype, "fortran_order": fortran, "shape": tuple(shape)}
    text = repr(header) if not header_junk else "{'descr': " + repr(dtype) + ", 'shape': (,"
    buf = io.BytesIO()
    text = text + " " * (64 - (10 + len(text) + 1) % 64) + "\n"
    buf.write(b"\x93NUMPY\x01\x00" + len(text).to_bytes(2, "little") + text.encode("latin1"))
    buf.write(payload)
    return buf.getvalue()


def _valid_member(rng_seed: int, kind: str) -> bytes:
    rng = np.random.default_rng(rng_seed)
    out = io.BytesIO()
    if kind == "indptr":
        np.save(out, np.array([0, 1, 2, 2], dtype=np.int64))
    elif kind == "indices":
        np.save(out, rng.integers(-2, 5, 2).astype(np.int32))
    elif kind == "data":
        np.save(out, np.ones(2, dtype=np.float32))
    elif kind == "shape":
        np.save(out, np.array([3, int(rng.integers(0, 5))], dtype=np.int64))
    elif kind == "labels":
        np.save(out, rng.integers(0, 3, int(rng.integers(0, 5))))
    elif kind == "pickle":  # a pickled Python object: refused without trust
        np.save(out, np.array({"a": 1}, dtype=object), allow_pickle=True)
    return out.getvalue()


_MEMBER_NAMES = st.sampled_from(["adj_data", "adj_indices", "adj_indptr", "adj_shape",
                                 "attr_matrix", "labels", "adj_matrix", "node_attr",
                                 "node_label", "attr_data", "attr_indices", "attr_indptr",
                                 "attr_shape"])
_MEMBER = st.one_of(
    st.builds(_npy_bytes, _DTYPES, _SHAPE, st.booleans(), st.binary(max_size=200), st.booleans()),
    st.builds(_valid_member, st.integers(0, 1000),
              st.sampled_from(["indptr", "indices", "data", "shape", "labels", "pickle"])),
    st.binary(max_size=100),
)
def _npy(a, pickle_ok: bool = False) -> bytes:
    out = io.BytesIO()
    np.save(out, a, allow_pickle=pickle_ok)
    return out.getvalue()


def _valid_npz(n: int, layout: str, replace: str | None, member: bytes) -> dict[str, bytes]:
    """A valid archive of ``n`` nodes (gnn-benchmark or pickled GraphData layout), with
    member ``replace`` swapped for ``member``."""
    import scipy.sparse as sp

    rng = np.random.default_rng(n)
    adj = sp.random(n, n, density=0.3, random_state=n, format="csr", dtype=np.float32)
    x = rng.random((n, 3)).astype(np.float32)
    y = rng.integers(0, 3, n)
    if layout == "benchmark":
        files = {"adj_data": _npy(adj.data), "adj_indices": _npy(adj.indices),
                 "adj_indptr": _npy(adj.indptr), "adj_shape": _npy(np.array(adj.shape)),
                 "attr_matrix": _npy(x), "labels": _npy(y)}
    else:
        files = {"adj_matrix": _npy(np.array(adj, dtype=object), True),
                 "node_attr": _npy(x), "node_label": _npy(y)}
    if replace is not None:
        key = sorted(files)[zlib.crc32(replace.encode()) % len(files)] if replace not in files else replace
        files[key] = member
    return files


NPZ = st.one_of(
    st.builds(_valid_npz, st.integers(2, 12), st.sampled_from(["benchmark", "graphdata"]),
              st.one_of(st.none(), _MEMBER_NAMES), _MEMBER),
    st.dictionaries(_MEMBER_NAMES, _MEMBER, max_size=8),
    st.binary(max_size=300),  # not a zip at all
)


def fuzz_npz(members, tmp: Path, trust: bool) -> str:
    from oocstore.ingest.npz import npz_source

    path = tmp / "g.npz"
    if isinstance(members, bytes):
        path.write_bytes(members)
    else:
        with zipfile.ZipFile(path, "w") as z:
            for name, data in members.items():
                z.writestr(name + ".npy", data)
    src = npz_source(path, trust_pickle=trust)
    _build(src, tmp)
    return "parsed"


# -- planetoid ---------------------------------------------------------------------------

def _planetoid_files(n_all: int, n_test: int, dim: int, classes: int, mutate: str, junk: bytes,
                     gap: int) -> dict[str, bytes]:
    import scipy.sparse as sp

    rng = np.random.default_rng(n_all * 31 + n_test)
    allx = sp.csr_matrix(rng.random((n_all, dim)).astype(np.float32))
    tx = sp.csr_matrix(rng.random((n_test, dim)).astype(np.float32))
    ally = np.eye(classes)[rng.integers(0, classes, n_all)]
    ty = np.eye(classes)[rng.integers(0, classes, n_test)]
    y = ally[: max(0, n_all - 500)]
    test_ids = n_all + np.arange(n_test) + np.r_[0, np.full(max(0, n_test - 1), gap)]
    n = int(test_ids.max()) + 1 if n_test else n_all
    graph = {i: [int(j) for j in rng.integers(0, max(n, 1), 3)] for i in range(n)}
    objs = {"x": allx, "y": y, "tx": tx, "ty": ty, "allx": allx, "ally": ally, "graph": graph}
    files = {k: pickle.dumps(v, protocol=2) for k, v in objs.items()}
    files["test.index"] = "\n".join(str(int(i)) for i in test_ids).encode()
    if mutate in files:
        files[mutate] = junk
    elif mutate == "graph-strings":
        files["graph"] = pickle.dumps({"a": [1, "b"], 2: None})
    elif mutate == "graph-huge-id":
        files["graph"] = pickle.dumps({0: [10**15], 1: [0]})
    elif mutate == "test-huge-id":
        files["test.index"] = f"{n_all}\n{10**15}\n".encode()
    elif mutate == "deep":
        files["graph"] = b"(" * 100000 + b"."
    elif mutate == "global":
        files["ally"] = pickle.dumps(Path("/etc"))
    return files


PLANETOID = st.builds(
    _planetoid_files, st.one_of(st.integers(500, 520), st.integers(0, 520)), st.integers(0, 6),
    st.integers(1, 4), st.integers(1, 3),
    st.sampled_from(["none"] * 6 + ["x", "y", "tx", "ty", "allx", "ally", "graph", "test.index",
                     "graph-strings", "graph-huge-id", "test-huge-id", "deep", "global"]),
    st.binary(max_size=80), st.integers(0, 3))


def fuzz_planetoid(files: dict[str, bytes], tmp: Path) -> str:
    from oocstore.ingest.planetoid import planetoid_source

    d = tmp / "planetoid"
    d.mkdir(exist_ok=True)
    for k, v in files.items():
        (d / f"ind.fz.{k}").write_bytes(v)
    src = planetoid_source(d, "fz")
    _build(src, tmp)
    return "parsed"


# -- catalog JSON ------------------------------------------------------------------------

_JSON = st.recursive(
    st.one_of(st.none(), st.booleans(), st.integers(-2**70, 2**70), st.floats(),
              st.text(max_size=12)),
    lambda kids: st.one_of(st.lists(kids, max_size=4),
                           st.dictionaries(st.text(max_size=8), kids, max_size=4)),
    max_leaves=12)
_GOOD_ARRAY = {"name": "features", "dtype": "float32", "shape": [10, 4],
               "file": "arrays/features.1.bin", "offset": 0, "chunk_bytes": 4194304, "version": 1}
_FIELDS = st.sampled_from(sorted(_GOOD_ARRAY) + ["format_version", "plan", "arrays", "source"])
_NASTY = st.one_of(_JSON, st.sampled_from([
    "/etc/passwd", "../../x.bin", "arrays/../../x", "a\\b", "", -1, 10**15, [10**15, 10**15],
    [2**63], 1.5, "int66", "float32", [[1]], {"a": 1}, None, True, "arrays/x.1.bin"]))
_GOOD_IMAGES = {"kind": "colmap", "width": 4, "height": 2, "count": 2, "slot_bytes": 4096,
                "downscale": 1, "test_every": 8, "test_views": [1], "names": ["a.png", "b.png"],
                "background": [1.0, 1.0, 1.0], "source": "sparse", "format_version": 1,
                "name": "images"}
_IMAGES_FIELDS = st.sampled_from(sorted(_GOOD_IMAGES))
CATALOG = st.one_of(
    st.tuples(st.sampled_from(["array", "graph", "meta", "plan", "pack"]),
              st.dictionaries(_FIELDS, _NASTY, max_size=6).map(lambda d: {**_GOOD_ARRAY, **d})),
    st.tuples(st.just("images"), st.dictionaries(_IMAGES_FIELDS, _NASTY, max_size=4).map(
        lambda d: {**_GOOD_IMAGES, **d})),
    st.tuples(st.sampled_from(["array", "graph", "meta", "plan", "pack"]), _JSON),
    st.tuples(st.just("raw"), st.binary(max_size=60)),
)


def fuzz_catalog(case, tmp: Path) -> str:
    from oocstore.pack.format import PackMeta
    from oocstore.plan import PlanMeta
    from oocstore.store.catalog import decode
    from oocstore.store.format import ArrayMeta, GraphMeta, StoreMeta

    kind, value = case
    if kind == "raw":
        value = decode(value, "fuzz", tmp)
    else:
        value = decode(json.dumps(value, allow_nan=True).encode(), "fuzz", tmp)
    from oocstore.gs.scene import ImagesMeta

    cls = {"array": ArrayMeta, "graph": GraphMeta, "meta": StoreMeta, "plan": PlanMeta,
           "pack": PackMeta, "raw": ArrayMeta, "images": ImagesMeta}[kind]
    meta = cls.from_dict(value)
    if isinstance(meta, ImagesMeta):  # what Scene's image accessors compute from it
        bg = tuple(float(c) for c in meta.background) if meta.background is not None else None
        if meta.image_bytes > meta.slot_bytes or (bg is not None and len(bg) != 3):
            raise AssertionError(f"accepted inconsistent scene images {meta}")
        sorted(meta.test_views)
    if isinstance(meta, ArrayMeta):
        if meta.file.startswith("/") or ".." in meta.file.split("/"):
            raise AssertionError(f"accepted a file outside the store: {meta.file!r}")
        meta.nbytes, meta.num_chunks  # noqa: B018 (must not raise)
    return "parsed"


# -- 3DGS .ply ----------------------------------------------------------------------------

PLY_REQUIRED = ["x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
                "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"]
#: Header words, for token soup after "ply".
PLY_HEADER_TOKENS = st.sampled_from([
    "ply", "format", "ascii", "binary_little_endian", "binary_big_endian", "1.0", "2.0",
    "element", "vertex", "face", "property", "float", "uchar", "double", "list", "int", "x",
    "y", "f_rest_0", "comment", "obj_info", "end_header", "\n", "3", "-1",
    "99999999999999999999", "\r\n", "\xff", " ", "\x00"])
_PLY_TYPES = st.sampled_from(["float", "float"] + ["double", "uchar", "int", "short", "int8",
                                                   "float64", "uint", "char"])
_PLY_VALUES = st.one_of(st.floats(width=32), st.sampled_from([0.0, 1.0, -1.0, 1e38, -1e38,
                                                              88.0, 89.0, 710.0, 1e-45]))


def _ply_props(degree: int) -> list[str]:
    k = (degree + 1) ** 2
    return (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
            + [f"f_rest_{i}" for i in range(3 * (k - 1))]
            + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])


@st.composite
def _structured_ply(draw) -> bytes:
    """A header built like a real one (right names, mutated: dropped, renamed, duplicated,
    retyped, extra elements, counts off by one or absurd) and a body that fits it, or
    not."""
    degree = draw(st.integers(0, 3))
    props = _ply_props(degree)
    edit = draw(st.sampled_from(["none"] * 4 + ["drop", "dup", "rename", "extra", "shuffle"]))
    if edit == "drop":
        props.pop(draw(st.integers(0, len(props) - 1)))
    elif edit == "dup":
        props.append(props[draw(st.integers(0, len(props) - 1))])
    elif edit == "rename":
        props[draw(st.integers(0, len(props) - 1))] = draw(st.sampled_from(
            ["f_rest_99", "opacity ", "X", "", "f_rest_-1", "scale_3"]))
    elif edit == "extra":
        props.append(draw(st.sampled_from(["f_rest_45", "red", "f_rest_3"])))
    elif edit == "shuffle":
        props = draw(st.permutations(props))
    fmt = draw(st.sampled_from(["binary_little_endian", "binary_little_endian", "ascii",
                                "binary_big_endian"]))
    types = [draw(_PLY_TYPES) if draw(st.integers(0, 9)) == 0 else "float" for _ in props]
    n = draw(st.integers(0, 6))
    declared = draw(st.sampled_from([n, n, n, n + 1, max(n - 1, 0), 10**12, 2**40 + 1]))
    lines = ["ply", f"format {fmt} 1.0"]
    before = draw(st.sampled_from(["", "", "face0", "face1", "list"]))
    if before == "face0":
        lines += ["element face 0", "property list uchar int vertex_indices"]
    elif before == "face1":
        lines += ["element face 1", "property float q"]
    elif before == "list":
        lines += ["element face 2", "property list uchar int vertex_indices"]
    lines.append(f"element vertex {declared}")
    lines += [f"property {t} {p}" for t, p in zip(types, props)]
    if draw(st.booleans()):
        lines += ["element face 1", "property list uchar int vertex_indices"]
    head = ("\n".join(lines + ["end_header"]) + "\n").encode("ascii", "replace")
    if before == "face1":
        head += b"\0\0\0\0" if fmt != "ascii" else b"0.5\n"
    values = draw(st.lists(_PLY_VALUES, min_size=n * len(props), max_size=n * len(props)))
    table = np.array(values, dtype=np.float64).reshape(n, len(props))
    if n and "rot_0" in props and draw(st.booleans()):  # mostly a usable rotation
        table[:, props.index("rot_0")] = 1.0
    if fmt == "ascii":
        body = "".join(" ".join(repr(float(v)) for v in row) + "\n" for row in table).encode()
    else:
        order = "<" if fmt == "binary_little_endian" else ">"
        np_types = {"float": "f4", "double": "f8", "float64": "f8", "uchar": "u1", "int": "i4",
                    "short": "i2", "int8": "i1", "uint": "u4", "char": "i1"}
        dt = np.dtype([(f"c{i}", order + np_types[t]) for i, t in enumerate(types)])
        rec = np.zeros(n, dtype=dt)
        with np.errstate(all="ignore"):
            for i in range(len(props)):
                rec[f"c{i}"] = table[:, i].astype(dt[i], casting="unsafe") if n else rec[f"c{i}"]
        body = rec.tobytes()
    tail = draw(st.sampled_from([b"", b"", b"\n", b"junk", b"\0" * 7]))
    cut = draw(st.sampled_from([0, 0, 0, 1, 5, 40]))
    data = head + body + tail
    return data[:len(data) - cut] if cut else data


@st.composite
def _damaged_ply(draw) -> bytes:
    """A valid file (``write_ply``) with bytes flipped and its end cut off."""
    from oocstore.gs.ply import write_ply
    from oocstore.gs.synthetic import random_params

    degree = draw(st.integers(0, 3))
    n = draw(st.integers(1, 20))
    with tempfile.TemporaryDirectory(prefix="oocstore-fuzz-ply-") as d:
        path = Path(d) / "a.ply"
        write_ply(path, random_params(n, degree, seed=draw(st.integers(0, 99))), degree)
        data = bytearray(path.read_bytes())
    for _ in range(draw(st.integers(0, 3))):
        pos = draw(st.integers(0, len(data) - 1))
        data[pos] ^= draw(st.integers(1, 255))
    cut = draw(st.one_of(st.just(0), st.integers(0, len(data))))
    return bytes(data[:len(data) - cut])


PLY = st.one_of(
    st.builds(lambda toks, tail: ("ply\n" + " ".join(toks)).encode("utf-8", "surrogateescape")
              + tail, st.lists(PLY_HEADER_TOKENS, max_size=40), st.binary(max_size=40)),
    _structured_ply(),
    _damaged_ply(),
    st.binary(max_size=200),
)


def fuzz_ply(data: bytes, tmp: Path) -> str:
    from oocstore.gs import layout
    from oocstore.cli.scene import visibility_summary
    from oocstore.gs.ingest import ingest_scene
    from oocstore.gs.ply import parse_header, read_ply

    try:  # the header parser alone, as ``oocstore ingest scene`` meets it first
        header = parse_header(data, source="fuzz.ply")
    except OocError as err:
        if "fuzz.ply" not in str(err):
            raise AssertionError(f"the error does not name the file: {err}") from err
    else:
        if not header.header_bytes <= len(data) or any(e.count < 0 for e in header.elements):
            raise AssertionError(f"inconsistent header {header}")
    path = tmp / "g.ply"
    path.write_bytes(data)
    params, degree = read_ply(path)
    if params.shape[1:] != (layout.param_width(degree),) or not np.all(np.isfinite(params)):
        raise AssertionError(f"read_ply returned params {params.shape} with non-finite values")
    scene = ingest_scene(path, tmp / "scene", block_size=4, views=4, overwrite=True)
    try:
        ids, got = scene.read_params()
        visibility_summary(scene)  # what `oocstore ingest scene` prints
    finally:
        scene.close()
    if not (np.array_equal(ids, np.arange(len(params))) and np.array_equal(got, params)):
        raise AssertionError("the ingested scene does not hold the parsed parameters")
    return "parsed"


# -- COLMAP text --------------------------------------------------------------------------

#: Words of COLMAP text lines, for token soup.
COLMAP_LINE = st.lists(st.sampled_from([
    "1", "2", "0", "-3", "PINHOLE", "OPENCV", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL",
    "FULL_OPENCV", "nan", "inf", "1e400", "1e-320", "640", "480", "0.7071", "x.png", "#", "0.5",
    "\t", "99999999999999999999", "1e308"]), max_size=12).map(" ".join)
_HOSTILE = st.one_of(st.floats(allow_nan=True, allow_infinity=True).map(repr),
                     st.sampled_from(["0", "-1", "1e308", "-1e308", "1e-320", "65537", "1e400",
                                      "nan", "abc", "", "99999999999999999999", "PINHOLE",
                                      "\x00", "\udcff", "#"]))
_COLMAP_PARAMS = {"SIMPLE_PINHOLE": "f cx cy", "PINHOLE": "fx fy cx cy", "SIMPLE_RADIAL":
                  "f cx cy k", "RADIAL": "f cx cy k k", "OPENCV": "fx fy cx cy k k k k"}


@st.composite
def _colmap_model(draw) -> tuple[bytes, bytes, bytes]:
    """A valid COLMAP text model (1-3 cameras, 1-5 images), then 0-3 mutations: a token
    replaced by a hostile value, a line dropped / duplicated / swapped, the file cut short
    or given stray bytes, CRLF endings, a byte-order mark."""
    ncams = draw(st.integers(1, 3))
    cams = ["# Camera list with one line of data per camera:"]
    for c in range(1, ncams + 1):
        model = draw(st.sampled_from(sorted(_COLMAP_PARAMS)))
        scale = draw(st.sampled_from([1, 1, 2, 0.5]))
        w, h = int(640 * scale), int(480 * scale)
        vals = []
        for kind in _COLMAP_PARAMS[model].split():
            if kind in ("f", "fx", "fy"):
                vals.append(draw(st.floats(50, 2000)))
            elif kind == "cx":
                vals.append(w / 2)
            elif kind == "cy":
                vals.append(h / 2)
            else:
                vals.append(draw(st.floats(-0.1, 0.1)))
        cams.append(" ".join([str(c), model, str(w), str(h), *map(repr, vals)]))
    images = ["# Image list with two lines of data per image:"]
    for i in range(1, draw(st.integers(1, 5)) + 1):
        q = draw(st.lists(st.floats(-1, 1), min_size=4, max_size=4))
        q[0] = q[0] if abs(q[0]) > 0.1 else 1.0
        t = draw(st.lists(st.floats(-10, 10), min_size=3, max_size=3))
        cam = draw(st.integers(1, ncams))
        images.append(" ".join([str(i), *map(repr, q), *map(repr, t), str(cam), f"img{i}.png"]))
        images.append(draw(st.sampled_from(["", "10.5 20.5 -1", "1 2 3 4 5 6"])))
    points = ["# 3D point list", "1 0.1 0.2 0.3 255 0 0 0.5 1 0"]
    files = [cams, images, points]
    for _ in range(draw(st.integers(0, 3))):
        lines = files[draw(st.integers(0, 2))]
        op = draw(st.sampled_from(["token", "token", "token", "drop", "dup", "swap"]))
        if not lines:
            continue
        k = draw(st.integers(0, len(lines) - 1))
        if op == "token":
            tok = lines[k].split(" ")
            tok[draw(st.integers(0, len(tok) - 1))] = draw(_HOSTILE)
            lines[k] = " ".join(tok)
        elif op == "drop":
            del lines[k]
        elif op == "dup":
            lines.insert(k, lines[k])
        else:
            j = draw(st.integers(0, len(lines) - 1))
            lines[k], lines[j] = lines[j], lines[k]
    out = []
    for lines in files:
        ending = draw(st.sampled_from(["\n", "\n", "\n", "\r\n"]))
        data = (("\ufeff" if draw(st.integers(0, 9)) == 0 else "") + ending.join(lines)
                + ending).encode("utf-8", "surrogateescape")
        damage = draw(st.sampled_from(["none"] * 6 + ["cut", "bytes"]))
        if damage == "cut":
            data = data[:draw(st.integers(0, len(data)))]
        elif damage == "bytes":
            pos = draw(st.integers(0, len(data)))
            data = data[:pos] + draw(st.binary(min_size=1, max_size=4)) + data[pos:]
        out.append(data)
    return tuple(out)


COLMAP = st.one_of(
    st.tuples(st.lists(COLMAP_LINE, max_size=4).map("\n".join).map(str.encode),
              st.lists(COLMAP_LINE, max_size=6).map("\n".join).map(str.encode),
              st.binary(max_size=60)),
    _colmap_model(),
    _colmap_model(),
    st.tuples(st.binary(max_size=80), st.binary(max_size=80), st.binary(max_size=40)),
)


def _fuzz_scene_source(tmp: Path) -> Path:
    """A small valid ``.ply`` to ingest with fuzzed cameras (written once per folder)."""
    from oocstore.gs.ply import write_ply
    from oocstore.gs.synthetic import random_params

    path = tmp / "src.ply"
    if not path.exists():
        write_ply(path, random_params(40, 0, seed=0), 0)
    return path


def fuzz_colmap(files: tuple[bytes, bytes, bytes], tmp: Path) -> str:
    """cameras.txt, images.txt and points3D.txt: read as a whole model (the photo
    ingest's reader, points included), then as ``--cameras`` (which ignores points3D.txt:
    a hostile one beside the others must change nothing there)."""
    from oocstore.gs.cameras import read_colmap_text
    from oocstore.gs.colmap import read_colmap_model
    from oocstore.cli.scene import visibility_summary
    from oocstore.gs.ingest import ingest_scene

    d = tmp / "sparse"
    d.mkdir(exist_ok=True)
    for name, data in zip(("cameras.txt", "images.txt", "points3D.txt"), files):
        (d / name).write_bytes(data)
    try:  # the whole model, points3D.txt included, as the photo ingest reads it
        model = read_colmap_model(d)
        if model.points is not None and not np.all(np.abs(model.points) < 1e30):
            raise AssertionError("read_colmap_model returned non-finite points")
    except OocError:
        pass
    cams = read_colmap_text(d)
    if not (len(cams) >= 1 and np.all(np.isfinite(cams.viewmats)) and np.all(np.isfinite(cams.Ks))
            and cams.width > 0 and cams.height > 0 and np.all(cams.Ks[:, 0, 0] > 0)):
        raise AssertionError(f"read_colmap_text returned unusable cameras {cams}")
    scene = ingest_scene(_fuzz_scene_source(tmp), tmp / "scene", block_size=8, cameras=d,
                         views=4, overwrite=True)
    try:
        if not np.all(np.isfinite(scene.cameras.viewmats)):
            raise AssertionError("the scene's cameras are not finite")
        visibility_summary(scene)  # what `oocstore ingest scene` prints
    finally:
        scene.close()
    return "parsed"


# -- photo datasets: COLMAP binary models, transforms.json, image files --------------------

def _photo_cameras(n: int, w: int = 8, h: int = 6):
    from oocstore.gs.cameras import Cameras, look_at

    vms = np.stack([look_at([3 * np.cos(a), 3 * np.sin(a), 1.0], [0, 0, 0], [0, 0, 1])
                    for a in np.linspace(0, 2 * np.pi, n, endpoint=False)])
    k = np.array([[10.0, 0, w / 2], [0, 10.0, h / 2], [0, 0, 1]])
    return Cameras(vms, np.broadcast_to(k, (n, 3, 3)).copy(), w, h,
                   tuple(f"img{i}.png" for i in range(n)))


def _tiny_png(w: int = 8, h: int = 6, mode: str = "RGB", seed: int = 0) -> bytes:
    from PIL import Image

    rng = np.random.default_rng(seed)
    chans = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    a = rng.integers(0, 256, size=(h, w, chans), dtype=np.uint8)
    buf = io.BytesIO()
    Image.fromarray(a[..., 0] if chans == 1 else a, mode).save(buf, "PNG")
    return buf.getvalue()


@st.composite
def _colmap_binary(draw) -> tuple[bytes, bytes, bytes]:
    """A valid binary model (1-4 views, any supported model, 0-5 points), then 0-3
    mutations per file: bytes flipped or overwritten with extreme values (counts, ids,
    model ids, sizes, NaN doubles), the file cut short or extended."""
    import struct

    from oocstore.gs.colmap import write_colmap_model

    n = draw(st.integers(1, 4))
    model = draw(st.sampled_from(["PINHOLE", "SIMPLE_PINHOLE", "SIMPLE_RADIAL", "RADIAL",
                                  "OPENCV"]))
    npts = draw(st.integers(0, 5))
    with tempfile.TemporaryDirectory() as t:
        rng = np.random.default_rng(draw(st.integers(0, 1000)))
        write_colmap_model(t, _photo_cameras(n), binary=True, model=model,
                           distortion=(0.01, -0.01, 0.001, 0.0),
                           points=rng.normal(size=(npts, 3)),
                           colors=rng.integers(0, 256, size=(npts, 3)))
        files = [bytearray((Path(t) / f).read_bytes())
                 for f in ("cameras.bin", "images.bin", "points3D.bin")]
    for _ in range(draw(st.integers(0, 3))):
        data = files[draw(st.integers(0, 2))]
        op = draw(st.sampled_from(["flip", "value", "value", "cut", "extend"]))
        if op == "cut":
            del data[draw(st.integers(0, len(data))):]
        elif op == "extend":
            data.extend(draw(st.binary(min_size=1, max_size=16)))
        elif len(data) >= 8:
            pos = draw(st.integers(0, len(data) - 8))
            if op == "flip":
                data[pos] ^= 1 << draw(st.integers(0, 7))
            else:
                val = draw(st.sampled_from([
                    struct.pack("<Q", 2 ** 63), struct.pack("<q", -1), struct.pack("<d", np.nan),
                    struct.pack("<d", np.inf), struct.pack("<d", 1e308), struct.pack("<Q", 0),
                    struct.pack("<i", 99) + b"\0" * 4, struct.pack("<Q", 70000),
                    struct.pack("<d", -5.0), b"\0" * 8, b"\xff" * 8]))
                data[pos:pos + 8] = val
    return tuple(bytes(f) for f in files)


COLMAP_BIN = st.one_of(_colmap_binary(), _colmap_binary(), _colmap_binary(),
                       st.tuples(st.binary(max_size=80), st.binary(max_size=120),
                                 st.binary(max_size=60)))


def _photo_ingest_check(src: Path, tmp: Path, **kw) -> str:
    """Ingest a photo dataset; when it succeeds, its cameras are finite and every
    stored image reads back (CRC checked) with the stored size."""
    from oocstore.gs.ingest import ingest_photos

    scene = ingest_photos(src, tmp / "scene", overwrite=True, init_points=16, block_size=8,
                          test_every=0, **kw)
    try:
        if not (np.all(np.isfinite(scene.cameras.viewmats)) and np.all(np.isfinite(scene.cameras.Ks))):
            raise AssertionError("the scene's cameras are not finite")
        for v in range(scene.num_images):
            if scene.read_image(v).shape != (scene.image_size[1], scene.image_size[0], 3):
                raise AssertionError("a stored image has the wrong shape")
    finally:
        scene.close()
    return "parsed"


def fuzz_colmap_binary(files: tuple[bytes, bytes, bytes], tmp: Path) -> str:
    """cameras.bin, images.bin, points3D.bin (with 8x6 images for the views they name)."""
    d = tmp / "sparse" / "0"
    d.mkdir(parents=True, exist_ok=True)
    for name, data in zip(("cameras.bin", "images.bin", "points3D.bin"), files):
        (d / name).write_bytes(data)
    images = tmp / "images"
    images.mkdir(exist_ok=True)
    for i in range(4):
        if not (images / f"img{i}.png").exists():
            (images / f"img{i}.png").write_bytes(_tiny_png(seed=i))
    return _photo_ingest_check(d, tmp)


_JSON_HOSTILE = st.one_of(
    st.sampled_from([None, True, "", "abc", "../../etc/passwd", "/abs.png", [], {}, [[1, 2]],
                     0, -1, 1e308, -1e308, 2 ** 70, 0.0, 3.2, 1e-300]),
    st.floats(allow_nan=False, allow_infinity=False), st.integers(-10, 10))


@st.composite
def _transforms_doc(draw) -> tuple[bytes, tuple[bytes, ...]]:
    """A valid transforms.json (NeRF-synthetic or instant-ngp style, 1-3 frames, 8x6
    images: RGB, RGBA or grayscale PNGs), then 0-3 mutations: a key dropped or given a
    hostile value (global or per frame), a matrix entry replaced, frames duplicated or
    dropped, an image file damaged, cut or replaced by random bytes."""
    n = draw(st.integers(1, 3))
    cams = _photo_cameras(n)
    frames = []
    for i in range(n):
        c2w = np.linalg.inv(cams.viewmats[i].astype(np.float64))
        c2w[:3, 1:3] *= -1
        frames.append({"file_path": f"./img{i}" if draw(st.booleans()) else f"img{i}.png",
                       "transform_matrix": c2w.tolist()})
    doc: dict = {"camera_angle_x": 2 * np.arctan(0.5 * 8 / 10.0)}
    if draw(st.booleans()):
        doc.update({"fl_x": 10.0, "fl_y": 10.0, "cx": 4.0, "cy": 3.0, "w": 8, "h": 6,
                    "k1": draw(st.floats(-0.2, 0.2)), "k2": 0.0, "p1": 0.0, "p2": 0.0})
    doc["frames"] = frames
    images = [_tiny_png(mode=draw(st.sampled_from(["RGB", "RGBA", "L"])), seed=i)
              for i in range(n)]
    for _ in range(draw(st.integers(0, 3))):
        op = draw(st.sampled_from(["key", "key", "frame-key", "matrix", "frames", "image"]))
        if op == "key":
            k = draw(st.sampled_from(["camera_angle_x", "camera_angle_y", "fl_x", "fl_y", "cx",
                                      "cy", "w", "h", "k1", "k3", "p2", "frames",
                                      "camera_model"]))
            if draw(st.booleans()):
                doc.pop(k, None)
            else:
                doc[k] = draw(_JSON_HOSTILE)
        elif op == "frame-key" and isinstance(doc.get("frames"), list) and doc["frames"]:
            fr = doc["frames"][draw(st.integers(0, len(doc["frames"]) - 1))]
            if isinstance(fr, dict):
                fr[draw(st.sampled_from(["file_path", "transform_matrix", "fl_x", "w"]))] = \
                    draw(_JSON_HOSTILE)
        elif op == "matrix" and isinstance(doc.get("frames"), list) and doc["frames"]:
            fr = doc["frames"][0]
            m = fr.get("transform_matrix") if isinstance(fr, dict) else None
            if isinstance(m, list) and len(m) == 4 and all(isinstance(r, list) for r in m):
                m[draw(st.integers(0, 3))][draw(st.integers(0, 3))] = draw(st.one_of(
                    st.floats(-1e6, 1e6), st.sampled_from([None, "x", 1e308])))
        elif op == "frames" and isinstance(doc.get("frames"), list) and doc["frames"]:
            if draw(st.booleans()):
                doc["frames"].append(doc["frames"][0])
            else:
                doc["frames"].pop()
        elif op == "image":
            i = draw(st.integers(0, n - 1))
            how = draw(st.sampled_from(["cut", "flip", "bytes"]))
            data = bytearray(images[i])
            if how == "cut":
                del data[draw(st.integers(0, len(data))):]
            elif how == "flip" and data:
                data[draw(st.integers(0, len(data) - 1))] ^= 0xFF
            else:
                data = bytearray(draw(st.binary(max_size=64)))
            images[i] = bytes(data)
    text = json.dumps(doc, allow_nan=True).encode()
    if draw(st.integers(0, 9)) == 0:
        text = text[:draw(st.integers(0, len(text)))]
    return text, tuple(images)


TRANSFORMS = st.one_of(_transforms_doc(), _transforms_doc(), _transforms_doc(),
                       st.tuples(st.binary(max_size=80), st.just((_tiny_png(),))))


def fuzz_transforms(case: tuple[bytes, tuple[bytes, ...]], tmp: Path) -> str:
    """transforms.json and its images (some damaged), ingested as a user would, with
    --skip-missing-images half of the time."""
    text, images = case
    d = tmp / "tf"
    if d.exists():
        import shutil

        shutil.rmtree(d)
    d.mkdir()
    (d / "transforms.json").write_bytes(text)
    for i, data in enumerate(images):
        (d / f"img{i}.png").write_bytes(data)
    return _photo_ingest_check(d / "transforms.json", tmp,
                               skip_missing_images=len(text) % 2 == 0)


# -- budgets -----------------------------------------------------------------------------

#: Fixed overhead above the CPU budget allowed for the measured peak RSS (docs/BUDGETS.md).
BUDGET_OVERHEAD = 16 << 20


def _status(key: str) -> int:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key):
                return int(line.split()[1]) * 1024
    return 0


def budget_cases(store_path: Path, cases: int, seed: int = 0) -> list[dict]:
    """Random cache sizes, policies, blowup caps and CPU budgets over the plans of
    ``store_path``: each case is either refused up front (``BudgetError`` at pack time,
    nothing committed; or when the reader is built) or reads every batch with the
    accountant's charge and the measured peak RSS inside the budget (+ the fixed
    overhead). Run in a process of its own: the RSS high-water mark is reset per case."""
    from oocstore import Store
    from oocstore.budget import MemoryBudget
    from oocstore.errors import BudgetError
    from oocstore.pack import PackOptions, pack_plan
    from oocstore.tiers import TieredReader

    rng = np.random.default_rng(seed)
    out = []
    with Store(store_path, readonly=False) as s:
        plans = sorted(k[len("plan/"):] for k, _ in s.items("plan/") if "/" not in k[5:])
        feat = s.array_meta("features").nbytes
        for i in range(cases):
            plan = plans[int(rng.integers(len(plans)))]
            opts = dict(cpu_cache=int(feat * rng.choice([0, 0.05, 0.3, 0.8])),
                        max_disk_blowup=float(rng.choice([0, 1, 4, 16])),
                        policy=str(rng.choice(["static", "belady"])))
            budget = int(feat * rng.uniform(0.02, 1.2))
            name = f"fz{i}"
            case = {"plan": plan, "budget": budget, **opts}
            version = s.version
            try:
                pack_plan(s, plan, name=name, overwrite=True,
                          options=PackOptions(**opts, cpu_budget=budget))
            except BudgetError as err:
                s.refresh()
                case.update(outcome="refused at pack", committed=s.version != version,
                            message=str(err)[:400])
                out.append(case)
                continue
            with open("/proc/self/clear_refs", "w") as f:
                f.write("5")  # the peak-RSS mark restarts from here
            base = _status("VmRSS:")
            try:
                with TieredReader(s, name, budget=MemoryBudget(cpu=budget)) as r:
                    for e in range(r.num_epochs):
                        for b in range(r.num_batches(e)):
                            r.read_batch(e, b)
                    charged = r.accountant.peak("cpu")
            except BudgetError as err:
                case.update(outcome="refused at read", message=str(err)[:400])
                out.append(case)
                continue
            peak = _status("VmHWM:") - base
            case.update(outcome="ran", charged=charged, peak_rss_above_base=peak,
                        within=charged <= budget and peak <= budget + BUDGET_OVERHEAD)
            out.append(case)
    return out


# -- hostile catalogs ---------------------------------------------------------------------

_BIG = 2**70
_A, _P, _K = "array/features", "plan/train", "pack/train"

#: (label, catalog key, field or None for the whole value, hostile value). Applied to a
#: store with arrays, a graph, splits, plan ``train`` and pack ``train``; ``None`` as the
#: value deletes the field. Each must be refused as the project's own error naming the
#: key (or reported by ``verify``) by every command, and no command may delete the
#: catalog or anything outside the store's data directories.
HOSTILE_CATALOG = [
    ("file is the catalog", _A, "file", "catalog.lmdb/data.mdb"),
    ("file is the lock file", _A, "file", "catalog.lmdb/lock.mdb"),
    ("file outside (..)", _A, "file", "../victim/a.bin"),
    ("file in a data dir then ..", _A, "file", "arrays/../catalog.lmdb/data.mdb"),
    ("file absolute", _A, "file", "/tmp/oocstore-hostile/a.bin"),
    ("file at the top", _A, "file", "features.bin"),
    ("file is a data directory", _A, "file", "arrays"),
    ("file with empty part", _A, "file", "arrays//features.1.bin"),
    ("file with NUL", _A, "file", "arrays/feat\x00ures.1.bin"),
    ("file with backslash", _A, "file", "arrays\\features.1.bin"),
    ("file in an unknown dir", _A, "file", "other/features.1.bin"),
    ("file not a string", _A, "file", 5),
    ("file empty", _A, "file", ""),
    ("offset 2^70", _A, "offset", _BIG),
    ("offset negative", _A, "offset", -4096),
    ("offset a string", _A, "offset", "0"),
    ("offset a float", _A, "offset", 1.5),
    ("offset a bool", _A, "offset", True),
    ("shape negative", _A, "shape", [-1, 16]),
    ("shape 2^70", _A, "shape", [_BIG, 16]),
    ("shape a string", _A, "shape", "3000"),
    ("shape holds a string", _A, "shape", [3000, "16"]),
    ("shape holds a float", _A, "shape", [3000.0, 16]),
    ("dtype object", _A, "dtype", "object"),
    ("dtype not a string", _A, "dtype", 5),
    ("chunk_bytes 0", _A, "chunk_bytes", 0),
    ("chunk_bytes negative", _A, "chunk_bytes", -1),
    ("chunk_bytes 2^70", _A, "chunk_bytes", _BIG),
    ("version negative", _A, "version", -1),
    ("version a string", _A, "version", "1"),
    ("name with NUL", _A, "name", "feat\x00"),
    ("name not the key", _A, "name", "labels"),
    ("array entry a list", _A, None, []),
    ("array entry null", _A, None, None),
    ("sums a string", "sums/features", None, "x"),
    ("sums hold a float", "sums/features", None, [1.5]),
    ("sums negative", "sums/features", None, [-1]),
    ("sums 2^70", "sums/features", None, [_BIG]),
    ("meta version negative", "meta", "version", -1),
    ("meta version 2^70", "meta", "version", _BIG),
    ("meta source a list", "meta", "source", []),
    ("meta a string", "meta", None, "x"),
    ("graph num_nodes negative", "graph", "num_nodes", -5),
    ("graph num_nodes 2^70", "graph", "num_nodes", _BIG),
    ("graph indptr unknown", "graph", "indptr", "nonexistent"),
    ("graph indptr not a string", "graph", "indptr", 5),
    ("graph a list", "graph", None, []),
    ("splits a list", "splits", None, []),
    ("split not a string", "splits", "train", 5),
    ("split unknown array", "splits", "train", "nonexistent"),
    ("split name with NUL", "splits", "tr\x00ain", "split/train"),
    ("plan name escapes", _P, "name", "../x"),
    ("plan arrays a list", _P, "arrays", []),
    ("plan array elsewhere", _P, "arrays", {"data": "graph/indices"}),
    ("plan batch_size negative", _P, "batch_size", -1),
    ("plan epochs 2^70", _P, "epochs", _BIG),
    ("pack name with slash", _K, "name", "p/q"),
    ("pack name not the key", _K, "name", "other"),
    ("pack arrays elsewhere", _K, "arrays", {"rows": "graph/indices", "tier": "labels"}),
    ("pack gpu_rows negative", _K, "gpu_rows", -1),
    ("pack row_bytes 2^70", _K, "row_bytes", _BIG),
    ("pack plan not a string", _K, "plan", 5),
    ("pack features unknown", _K, "features", "nonexistent"),
    ("pack entry a list", _K, None, []),
    ("pack key with slash", "pack/p/q", None, "COPY pack/train"),
    ("pack key ..", "pack/..", None, "COPY pack/train"),
    ("plan key with NUL", "plan/tr\x00ain", None, "COPY plan/train"),
]


def write_hostile(store: Path, key: str, field, value) -> None:
    """Put a hostile ``value`` into the catalog of ``store`` behind oocstore's back (raw
    LMDB), with the catalog checksum recomputed, as a deliberate editor would."""
    import lmdb

    from oocstore.store.catalog import CATALOG_DIR, CHECKSUM_KEY, content_crc

    env = lmdb.open(str(store / CATALOG_DIR), subdir=True, map_size=1 << 30, max_dbs=0)
    try:
        with env.begin(write=True) as txn:
            if isinstance(value, str) and value.startswith("COPY "):
                val = json.loads(txn.get(value[5:].encode()))
                if isinstance(val, dict):
                    val["name"] = key.split("/", 1)[1]
            elif field is None:
                val = value
            else:
                val = json.loads(txn.get(key.encode()) or b"{}")
                if value is None:
                    val.pop(field, None)
                else:
                    val[field] = value
            txn.put(key.encode(), json.dumps(val, sort_keys=True).encode())
            txn.put(CHECKSUM_KEY.encode(), json.dumps(content_crc(txn)).encode())
    finally:
        env.close()


def _tree(root: Path) -> set[str]:
    return {p.relative_to(root).as_posix() for p in root.rglob("*")
            if p.is_file() or p.is_symlink()}


def hostile_catalog_case(template: Path, work: Path, case) -> dict:
    """Run ``inspect``, ``verify``, ``gc``, ``rm --pack``, ``rm --plan --with-packs`` (the
    library calls behind them) on a copy of ``template`` with one hostile catalog value;
    returns each command's outcome and what it deleted outside the data directories."""
    import shutil

    from oocstore import Store
    from oocstore.errors import OocError
    from oocstore.store.gc import collect_garbage, remove
    from oocstore.store.info import store_info
    from oocstore.store.verify import verify_store

    label, key, field, value = case
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    store = work / "s"
    shutil.copytree(template, store)
    victim = work / "victim"
    victim.mkdir()
    for name in ("a.bin", "b.tmp"):
        (victim / name).write_bytes(b"victim")
    write_hostile(store, key, field, value)
    outside = {p for p in _tree(store) if p.split("/")[0] not in ("arrays", "plans", "packs",
                                                                  "scenes")}
    outside = {p for p in outside if not p.startswith("catalog.lmdb/readers/")}
    victims = _tree(victim)

    def inspect(s):
        store_info(s)

    def verify(s):
        damage = verify_store(s)
        if damage:
            return "damage: " + "; ".join(str(d) for d in damage)[:300]

    ops = [("inspect", False, inspect), ("verify", False, verify),
           ("gc", True, lambda s: collect_garbage(s)),
           ("rm --pack", True, lambda s: remove(s, pack="train")),
           ("rm --plan", True, lambda s: remove(s, plan="train", with_packs=True))]
    out = {"label": label, "key": key, "outcomes": {}, "unclean": [], "deleted_outside": []}
    for name, writable, op in ops:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")
                with Store(store, readonly=not writable) as s:
                    res = op(s)
            out["outcomes"][name] = res if isinstance(res, str) else "ok"
        except OocError as err:
            out["outcomes"][name] = f"{type(err).__name__}: {err}"
        except Exception as err:  # noqa: BLE001 — a finding
            out["unclean"].append(f"{name}: {type(err).__name__}: {err}"[:300])
    gone = sorted((outside - _tree(store)) | {f"../victim/{v}" for v in victims - _tree(victim)})
    out["deleted_outside"] = gone
    return out


_HOSTILE_VALUES = [_BIG, -_BIG, -1, 0, 2**31, 2**63, 1.5, float("inf"), True, None, "", "..",
                   "\x00", "a/../b", "catalog.lmdb/data.mdb", "../x.bin", "arrays/x\x00.bin",
                   "/etc/passwd", [], [-1], [_BIG], [1, "x"], {}, {"a": "../b"},
                   {"data": "catalog.lmdb/data.mdb"}, "\u00e9" * 70]
_HOSTILE_KEYS = ["array/features", "array/graph/indices", "array/pack/train/rows",
                 "array/plan/train/data", "sums/features", "meta", "graph", "splits",
                 "plan/train", "pack/train"]


def random_hostile_cases(n: int, seed: int) -> list[tuple]:
    """``n`` random (key, field, value) mutations: a field of a real entry (or the whole
    entry) set to a value from a pool of hostile ones."""
    import random

    rng = random.Random(seed)
    fields = {"array/": ["file", "offset", "shape", "dtype", "chunk_bytes", "version", "name"],
              "sums/": [None], "meta": ["version", "source", "format_version", None],
              "graph": ["num_nodes", "num_edges", "indptr", "indices", None],
              "splits": ["train", "val", None],
              "plan/": ["name", "arrays", "batch_size", "epochs", "fanouts", "num_nodes",
                        "batches_per_epoch", "node_dtype", None],
              "pack/": ["name", "arrays", "plan", "features", "gpu_rows", "cpu_rows",
                        "row_bytes", "num_segments", "plan_version", None]}
    out = []
    for i in range(n):
        key = rng.choice(_HOSTILE_KEYS)
        field = rng.choice(next(v for k, v in fields.items() if key.startswith(k)))
        value = rng.choice(_HOSTILE_VALUES)
        if field is None and value is None:
            value = []
        out.append((f"random {i}: {key} {field}={value!r:.30}", key, field, value))
    return out


def run_hostile_catalog(template: Path, tmp: Path, *, random_cases: int = 0,
                        seed: int = 0) -> dict:
    """Every case of :data:`HOSTILE_CATALOG` (plus ``random_cases`` random ones); a
    finding is an exception that is not an ``OocError``, a deletion outside the data
    directories, or a table case no command noticed (a random mutation may be
    harmless, e.g. a count no command reads)."""
    findings = []
    counts: Counter = Counter()
    cases = [(c, True) for c in HOSTILE_CATALOG] + [
        (c, False) for c in random_hostile_cases(random_cases, seed)]
    for i, (case, must_notice) in enumerate(cases):
        r = hostile_catalog_case(template, tmp / f"h{i % 2}", case)
        noticed = any(not o.startswith("ok") and (case[1] in o or o.startswith("damage"))
                      for o in r["outcomes"].values())
        counts["noticed" if noticed else "not noticed"] += 1
        counts["unclean"] += bool(r["unclean"])
        counts["deleted outside"] += len(r["deleted_outside"])
        if r["unclean"] or r["deleted_outside"] or (must_notice and not noticed):
            findings.append(r)
    return {"inputs": len(cases), "counts": dict(counts), "findings": findings}


def _hostile_template(root: Path) -> Path:
    """A small store with arrays, a graph, splits, plan ``train`` and pack ``train``."""
    from oocstore import Store
    from oocstore.ingest import build_store
    from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
    from oocstore.pack import PackOptions, pack_plan
    from oocstore.samplers import sample_plan

    path = root / "template"
    build_store(path, synthetic_source(SyntheticSpec(nodes=3000, feat_dim=16, avg_degree=4)))
    with Store(path, readonly=False) as s:
        sample_plan(s, fanouts="5,5", batch_size=256, epochs=2, seed=1)
        pack_plan(s, options=PackOptions(cpu_cache=3000 * 16 * 4 // 10, max_disk_blowup=8))
    return path


# -- the runner --------------------------------------------------------------------------

COMPONENTS = {
    "edgelist": (st.tuples(EDGELIST, st.booleans()), lambda c, t: fuzz_edgelist(c[0], t, c[1])),
    "npz": (st.tuples(NPZ, st.booleans()), lambda c, t: fuzz_npz(c[0], t, c[1])),
    "planetoid": (PLANETOID, fuzz_planetoid),
    "catalog": (CATALOG, fuzz_catalog),
    "ply": (PLY, fuzz_ply),
    "colmap": (COLMAP, fuzz_colmap),
    "colmap-bin": (COLMAP_BIN, fuzz_colmap_binary),
    "transforms": (TRANSFORMS, fuzz_transforms),
}


def run_component(name: str, examples: int, *, seed: int = 0, deadline_ms: int = 20000,
                  tmp: Path | None = None) -> dict:
    """Feed ``examples`` generated inputs to component ``name``; returns counts and the
    findings (input repr, exception) — empty when every input parsed or failed cleanly."""
    strategy, target = COMPONENTS[name]
    counts: Counter = Counter()
    findings: list[tuple[str, str]] = []
    slowest = [0.0]
    root = Path(tmp or tempfile.mkdtemp(prefix="oocstore-fuzz-"))

    @settings(max_examples=examples, database=None, deadline=None, derandomize=False,
              suppress_health_check=list(HealthCheck), phases=["generate"])
    @given(strategy)
    def check(case):
        counts["inputs"] += 1
        work = root / f"case{counts['inputs'] % 4}"
        work.mkdir(exist_ok=True)
        t0 = time.perf_counter()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("error")  # as in the test suite
                counts[target(case, work)] += 1
        except OocError as err:
            counts["clean errors"] += 1
            counts[f"  {type(err).__name__}"] += 1
        except Exception as err:  # noqa: BLE001 — a finding
            counts["findings"] += 1
            findings.append((repr(case)[:300], f"{type(err).__name__}: {err}"[:300]))
        dt = time.perf_counter() - t0
        slowest[0] = max(slowest[0], dt)
        if dt * 1000 > deadline_ms:
            counts["findings"] += 1
            findings.append((repr(case)[:300], f"took {dt:.1f} s (a hang?)"))

    import random

    random.seed(seed)
    from hypothesis import seed as hseed

    hseed(seed)(check)()
    return {"component": name, "inputs": counts["inputs"], "parsed": counts["parsed"],
            "clean_errors": counts["clean errors"], "findings": findings,
            "slowest_s": round(slowest[0], 3),
            "errors": {k.strip(): v for k, v in counts.items() if k.startswith("  ")}}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--examples", type=int, default=2000, help="inputs per component")
    ap.add_argument("--only", choices=sorted(COMPONENTS), action="append",
                    help="fuzz only this component (repeatable)")
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--deadline-ms", type=int, default=20000,
                    help="an input taking longer counts as a hang")
    ap.add_argument("--json", action="store_true", help="print one JSON line per component")
    ap.add_argument("--budget-cases", type=int, default=0, metavar="N",
                    help="instead: N random budget/pack cases over the plans of --budget-store")
    ap.add_argument("--budget-store", default=None, metavar="STORE",
                    help="a store with at least one plan (packs fz<i> are written into it)")
    ap.add_argument("--hostile-catalog", type=int, default=None, metavar="N",
                    help="instead: every hostile catalog value of the table, plus N random "
                         "ones, through inspect / verify / gc / rm")
    args = ap.parse_args()
    if args.hostile_catalog is not None:
        with tempfile.TemporaryDirectory(prefix="oocstore-hostile-") as tmp:
            r = run_hostile_catalog(_hostile_template(Path(tmp)), Path(tmp), seed=args.seed,
                                    random_cases=args.hostile_catalog)
        print(f"hostile catalog: {r['inputs']} inputs ({len(HOSTILE_CATALOG)} from the table), "
              + ", ".join(f"{k} {v}" for k, v in sorted(r["counts"].items()))
              + f"; findings {len(r['findings'])}")
        for f in r["findings"][:10]:
            print(f"    FINDING {json.dumps(f, default=str)[:600]}")
        return 1 if r["findings"] else 0
    if args.budget_cases:
        if not args.budget_store:
            ap.error("--budget-cases needs --budget-store STORE")
        res = budget_cases(Path(args.budget_store), args.budget_cases, args.seed)
        for c in res:
            print(json.dumps(c, sort_keys=True))
        bad = [c for c in res if c.get("committed") or c.get("within") is False]
        print(f"budgets: {len(res)} cases, {sum(c['outcome'] == 'ran' for c in res)} ran inside "
              f"their budget, {sum(c['outcome'].startswith('refused') for c in res)} refused up "
              f"front, {len(bad)} violations")
        return 1 if bad else 0
    bad = 0
    for name in args.only or sorted(COMPONENTS):
        with tempfile.TemporaryDirectory(prefix="oocstore-fuzz-") as tmp:
            r = run_component(name, args.examples, seed=args.seed, deadline_ms=args.deadline_ms,
                              tmp=Path(tmp))
        bad += len(r["findings"])
        if args.json:
            print(json.dumps(r, sort_keys=True))
            continue
        print(f"{name:10s} inputs {r['inputs']:6d}  parsed {r['parsed']:5d}  clean errors "
              f"{r['clean_errors']:5d}  findings {len(r['findings'])}  slowest {r['slowest_s']} s"
              f"  ({', '.join(f'{k} {v}' for k, v in sorted(r['errors'].items()))})")
        for case, err in r["findings"][:10]:
            print(f"    FINDING {err}\n      input {case}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

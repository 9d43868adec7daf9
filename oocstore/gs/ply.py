"""The standard 3DGS ``.ply`` (the INRIA reference implementation's property names).

One ``vertex`` element with float properties::

    x y z  [nx ny nz]  f_dc_0..2  f_rest_0..3(K-1)-1  opacity  scale_0..2  rot_0..3

``f_dc_*`` is the DC SH coefficient per channel; ``f_rest_*`` are the others stored
*channel-major* (all of red's K-1 coefficients, then green's, then blue's), whereas
oocstore's records are coefficient-major (see :mod:`oocstore.gs.layout`); ``opacity``
is a logit, ``scale_*`` are log-scales, ``rot_*`` a quaternion (w, x, y, z). The SH
degree follows from the number of ``f_rest_*`` properties (0, 9, 24 or 45 for degrees
0..3). Normals are optional and ignored on reading (written as zeros, as the reference
does). ``binary_little_endian``, ``binary_big_endian`` and ``ascii`` files are read;
binary little-endian is written.

Every check happens before large allocations: a header whose vertex count needs more
bytes than the file holds is refused without reading the body.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import SourceError, UsageError
from . import layout

#: PLY scalar types and their numpy equivalents (both spellings of each).
PLY_TYPES = {"char": "i1", "int8": "i1", "uchar": "u1", "uint8": "u1", "short": "i2",
             "int16": "i2", "ushort": "u2", "uint16": "u2", "int": "i4", "int32": "i4",
             "uint": "u4", "uint32": "u4", "float": "f4", "float32": "f4", "double": "f8",
             "float64": "f8"}
FORMATS = {"ascii": None, "binary_little_endian": "<", "binary_big_endian": ">"}

#: A header longer than this is refused (real ones are a few hundred bytes).
MAX_HEADER_BYTES = 1 << 16
#: f_rest_* counts per SH degree.
REST_COUNTS = {3 * (layout.num_sh_coeffs(d) - 1): d for d in range(layout.MAX_SH_DEGREE + 1)}
#: Log-scales above this give an infinite float32 scale (e^88.72 is float32's largest).
MAX_LOG_SCALE = float(np.log(np.finfo(np.float32).max))
REQUIRED = ("x", "y", "z", "f_dc_0", "f_dc_1", "f_dc_2", "opacity", "scale_0", "scale_1",
            "scale_2", "rot_0", "rot_1", "rot_2", "rot_3")


@dataclass(frozen=True)
class PlyElement:
    name: str
    count: int
    properties: tuple[tuple[str, str], ...]  # (name, numpy type); list properties: "list"


@dataclass(frozen=True)
class PlyHeader:
    format: str
    elements: tuple[PlyElement, ...]
    header_bytes: int  # offset of the body

    def element(self, name: str) -> PlyElement | None:
        for e in self.elements:
            if e.name == name:
                return e
        return None


def parse_header(data: bytes, *, source: str = "<ply>") -> PlyHeader:
    """Parse a PLY header from the first bytes of a file (at least up to ``end_header``)."""
    end = data.find(b"end_header")
    if not data.startswith(b"ply"):
        raise SourceError(f"{source} is not a PLY file (it does not start with 'ply')")
    if end < 0:
        more = "" if len(data) < MAX_HEADER_BYTES else f" within {MAX_HEADER_BYTES} bytes"
        raise SourceError(f"{source}: the PLY header has no 'end_header'{more}: the file is "
                          "truncated or not a PLY file")
    nl = data.find(b"\n", end)
    if nl < 0:
        raise SourceError(f"{source}: the PLY header ends without a newline after 'end_header': "
                          "the file is truncated")
    try:
        text = data[:end].decode("ascii")
    except UnicodeDecodeError:
        raise SourceError(f"{source}: the PLY header holds non-ASCII bytes: the file is "
                          "damaged") from None
    lines = text.replace("\r", "").split("\n")
    fmt = None
    elements: list[list] = []
    for lineno, line in enumerate(lines[1:], 2):
        tok = line.split()
        if not tok or tok[0] in ("comment", "obj_info"):
            continue
        head = tok[0]
        if head == "format":
            if len(tok) != 3 or tok[1] not in FORMATS:
                raise SourceError(f"{source}: header line {lineno}: format {line.strip()[:60]!r} "
                                  f"is not one of {', '.join(FORMATS)} (version 1.0)")
            if tok[2] != "1.0":
                raise SourceError(f"{source}: header line {lineno}: PLY version {tok[2][:20]!r} is "
                                  "not supported (only 1.0)")
            fmt = tok[1]
        elif head == "element":
            if len(tok) != 3 or not tok[2].isdigit():
                raise SourceError(f"{source}: header line {lineno}: expected 'element NAME COUNT', "
                                  f"got {line.strip()[:60]!r}")
            count = int(tok[2])
            if count > 1 << 40:
                raise SourceError(f"{source}: element {tok[1][:40]!r} claims {count} items: "
                                  "absurd; the header is damaged")
            if any(e[0] == tok[1] for e in elements):
                raise SourceError(f"{source}: element {tok[1][:40]!r} is declared twice")
            elements.append([tok[1], count, []])
        elif head == "property":
            if not elements:
                raise SourceError(f"{source}: header line {lineno}: a property before any element")
            props = elements[-1][2]
            if len(tok) == 3 and tok[1] in PLY_TYPES:
                name, kind = tok[2], PLY_TYPES[tok[1]]
            elif (len(tok) == 5 and tok[1] == "list" and tok[2] in PLY_TYPES
                  and tok[3] in PLY_TYPES):
                name, kind = tok[4], "list"
            else:
                raise SourceError(f"{source}: header line {lineno}: cannot read property "
                                  f"{line.strip()[:60]!r} (types: {', '.join(sorted(PLY_TYPES))})")
            if any(p[0] == name for p in props):
                raise SourceError(f"{source}: property {name[:40]!r} of element "
                                  f"{elements[-1][0][:40]!r} is declared twice")
            props.append((name, kind))
        else:
            raise SourceError(f"{source}: header line {lineno}: unknown keyword {head[:40]!r}")
    if fmt is None:
        raise SourceError(f"{source}: the PLY header has no 'format' line")
    return PlyHeader(fmt, tuple(PlyElement(n, c, tuple(p)) for n, c, p in elements), nl + 1)


def read_header(path: str | os.PathLike) -> PlyHeader:
    path = Path(path)
    try:
        with open(path, "rb") as f:
            data = f.read(MAX_HEADER_BYTES)
    except FileNotFoundError:
        raise SourceError(f"PLY file {path} does not exist: check the path") from None
    except IsADirectoryError:
        raise SourceError(f"{path} is a directory, not a PLY file") from None
    return parse_header(data, source=str(path))


def sh_degree_of(header: PlyHeader, *, source: str = "<ply>") -> int:
    """The SH degree the vertex properties describe (refusing inconsistent sets)."""
    vertex = _vertex(header, source)
    names = [p[0] for p in vertex.properties]
    missing = [n for n in REQUIRED if n not in names]
    if missing:
        raise SourceError(f"{source}: vertex properties lack {', '.join(missing)}: a 3DGS .ply "
                          "needs x y z, f_dc_0..2, opacity, scale_0..2 and rot_0..3")
    rest = sorted(n for n in names if n.startswith("f_rest_"))
    if len(rest) not in REST_COUNTS:
        raise SourceError(f"{source}: {len(rest)} f_rest_* properties match no SH degree (degrees "
                          f"0..3 have {', '.join(str(k) for k in sorted(REST_COUNTS))}): the file "
                          "is damaged or not a 3DGS .ply")
    expect = {f"f_rest_{i}" for i in range(len(rest))}
    if set(rest) != expect:
        odd = sorted(set(rest) - expect)[:3]
        raise SourceError(f"{source}: f_rest_* properties are not numbered 0..{len(rest) - 1} "
                          f"(found {', '.join(odd)}): the file is damaged")
    for n, kind in vertex.properties:
        if kind == "list":
            raise SourceError(f"{source}: vertex property {n!r} is a list: 3DGS vertices hold "
                              "scalars only")
    return REST_COUNTS[len(rest)]


def _vertex(header: PlyHeader, source: str) -> PlyElement:
    v = header.element("vertex")
    if v is None:
        raise SourceError(f"{source}: the PLY file has no 'vertex' element")
    return v


def read_ply(path: str | os.PathLike) -> tuple[np.ndarray, int]:
    """``(params float32 [N, P], sh_degree)`` of a 3DGS ``.ply``."""
    path = Path(path)
    src = str(path)
    header = read_header(path)
    degree = sh_degree_of(header, source=src)
    vertex = _vertex(header, src)
    size = path.stat().st_size
    offset = header.header_bytes
    for e in header.elements:  # skip whatever comes before the vertices
        if e.name == "vertex":
            break
        if e.count == 0:
            continue
        if header.format == "ascii" or any(k == "list" for _, k in e.properties):
            raise SourceError(f"{src}: element {e.name!r} precedes 'vertex' and cannot be skipped: "
                              "write the vertices first")
        offset += e.count * sum(np.dtype(k).itemsize for _, k in e.properties)
    n = vertex.count
    if header.format == "ascii":
        table = _read_ascii(path, offset, vertex, size, src)
    else:
        order = FORMATS[header.format]
        dt = np.dtype([(name, order + kind) for name, kind in vertex.properties])
        need = n * dt.itemsize
        if offset + need > size:
            raise SourceError(f"{src}: the header declares {n:,} vertices of {dt.itemsize} bytes "
                              f"({offset + need:,} bytes with the header) but the file holds "
                              f"{size:,}: it is truncated or the vertex count is wrong")
        table = np.fromfile(path, dtype=dt, count=n, offset=offset)
    k = layout.num_sh_coeffs(degree)
    p = layout.param_width(degree)
    params = np.empty((n, p), dtype=np.float32)
    cols = {name: i for i, name in enumerate(["x", "y", "z", "rot_0", "rot_1", "rot_2", "rot_3",
                                               "scale_0", "scale_1", "scale_2", "opacity"])}
    for name, i in cols.items():
        params[:, i] = table[name]
    sh = params[:, layout.sh_slice(degree)].reshape(n, k, 3)
    for c in range(3):
        sh[:, 0, c] = table[f"f_dc_{c}"]
        for j in range(1, k):
            sh[:, j, c] = table[f"f_rest_{c * (k - 1) + (j - 1)}"]
    params[:, layout.sh_slice(degree)] = sh.reshape(n, 3 * k)
    check_params(params, degree, source=src)
    return params, degree


def _read_ascii(path: Path, offset: int, vertex: PlyElement, size: int, src: str) -> dict:
    n, m = vertex.count, len(vertex.properties)
    if n * m * 2 > size - offset:  # every value needs a digit and a separator
        raise SourceError(f"{src}: the header declares {n:,} vertices of {m} values but the file "
                          f"body holds only {size - offset:,} bytes: it is truncated or the "
                          "vertex count is wrong")
    with open(path, "rb") as f:
        f.seek(offset)
        body = f.read()
    lines = body.split(b"\n", n)
    if len(lines) < n or (len(lines) == n and not lines[-1].strip() and n):
        raise SourceError(f"{src}: the header declares {n:,} vertices but the file holds "
                          f"{len(lines)} lines of them: it is truncated")
    try:
        data = np.array([ln.split() for ln in lines[:n]], dtype=np.float64) if n else \
            np.zeros((0, m))
    except ValueError:
        for i, ln in enumerate(lines[:n]):
            tok = ln.split()
            if len(tok) != m:
                raise SourceError(f"{src}: vertex {i} has {len(tok)} values, expected {m}") from None
            try:
                [float(t) for t in tok]
            except ValueError:
                raise SourceError(f"{src}: vertex {i} holds a value that is not a number: "
                                  f"{ln[:80]!r}") from None
        raise SourceError(f"{src}: cannot read the ascii vertices") from None
    if data.ndim != 2 or data.shape[1] != m:
        raise SourceError(f"{src}: ascii vertices do not all have {m} values")
    return {name: data[:, i] for i, (name, _) in enumerate(vertex.properties)}


def check_params(params: np.ndarray, sh_degree: int, *, source: str) -> None:
    """Refuse non-finite parameters, log-scales whose exponential overflows float32 and
    zero quaternions, naming the first bad Gaussian."""
    bad = ~np.isfinite(params)
    if bad.any():
        row, col = np.argwhere(bad)[0]
        raise SourceError(f"{source}: Gaussian {row} has {params[row, col]} in {_col_name(col)}: "
                          "parameters must be finite; fix or drop it in the source")
    big = params[:, layout.LOG_SCALES] > MAX_LOG_SCALE
    if big.any():
        row, col = np.argwhere(big)[0]
        raise SourceError(f"{source}: Gaussian {row} has scale_{col} = {params[row, 7 + col]:g}, "
                          f"a log-scale whose exponential overflows float32 (above "
                          f"{MAX_LOG_SCALE:.2f}): the file is damaged or holds linear scales "
                          "(a 3DGS .ply stores their logarithm)")
    qn = np.einsum("ij,ij->i", params[:, layout.QUATS], params[:, layout.QUATS])
    zero = np.flatnonzero(qn <= 1e-20)
    if zero.size:
        raise SourceError(f"{source}: Gaussian {zero[0]} has a zero rotation quaternion (rot_0..3 "
                          "all 0): give it a unit quaternion such as 1 0 0 0")


def _col_name(col: int) -> str:
    names = ["x", "y", "z", "rot_0", "rot_1", "rot_2", "rot_3", "scale_0", "scale_1", "scale_2",
             "opacity"]
    return names[col] if col < len(names) else f"SH column {col - layout.SH_START}"


def write_ply(path: str | os.PathLike, params: np.ndarray, sh_degree: int, *,
              chunk: int = 1 << 18) -> None:
    """Write ``params`` [N, P] as a binary little-endian 3DGS ``.ply`` (via a temporary
    file renamed into place, so ``path`` never holds half a file)."""
    degree = layout.check_sh_degree(sh_degree)
    p = layout.param_width(degree)
    params = np.asarray(params)
    if params.ndim != 2 or params.shape[1] != p:
        raise UsageError(f"params have shape {params.shape}, expected [N, {p}] for SH degree "
                         f"{degree}")
    k = layout.num_sh_coeffs(degree)
    names = (["x", "y", "z", "nx", "ny", "nz", "f_dc_0", "f_dc_1", "f_dc_2"]
             + [f"f_rest_{i}" for i in range(3 * (k - 1))]
             + ["opacity", "scale_0", "scale_1", "scale_2", "rot_0", "rot_1", "rot_2", "rot_3"])
    n = params.shape[0]
    head = ["ply", "format binary_little_endian 1.0", f"element vertex {n}"]
    head += [f"property float {name}" for name in names] + ["end_header"]
    path = Path(path)
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        f.write(("\n".join(head) + "\n").encode("ascii"))
        for lo in range(0, n, chunk):
            part = np.asarray(params[lo:lo + chunk], dtype=np.float32)
            m = len(part)
            out = np.zeros((m, len(names)), dtype="<f4")
            out[:, 0:3] = part[:, layout.MEANS]
            sh = part[:, layout.sh_slice(degree)].reshape(m, k, 3)
            out[:, 6:9] = sh[:, 0, :]
            # f_rest is channel-major: [m, 3, k-1]
            out[:, 9:9 + 3 * (k - 1)] = sh[:, 1:, :].transpose(0, 2, 1).reshape(m, -1)
            j = 9 + 3 * (k - 1)
            out[:, j] = part[:, layout.OPACITY][:, 0]
            out[:, j + 1:j + 4] = part[:, layout.LOG_SCALES]
            out[:, j + 4:j + 8] = part[:, layout.QUATS]
            f.write(out.tobytes())
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)

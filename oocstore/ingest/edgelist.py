"""SNAP-style text edge lists: one ``src dst`` pair of non-negative integer ids per line,
separated by spaces or tabs, ``#`` comment lines, blank lines allowed; plain text or gzip
(recognised by its magic bytes, whatever the file is called).

Parsing is vectorised over blocks of :data:`READ_BYTES` of text (about 0.5 s for the 11 MB of
soc-Slashdot0902, 948k edges; its whole ingest takes about 2 s), and every line is checked:
a line with other than exactly two fields (a third weight column included) or a field
that is not a non-negative integer is refused with its line number.

Node ids are remapped to ``0 .. N-1`` in ascending order of the original ids, so node
``i`` of the store is the ``i``-th smallest id in the file (``np.unique`` of all ids
gives the mapping back); only ids that occur in some edge become nodes.

Features and labels come from ``.npy`` files (one row / label per remapped node) or are
generated from ``seed``: labels by neighbour-majority smoothing of random labels (so
they are homophilous — a GNN can do better than a feature-only model), and features
from :func:`oocstore.ingest.synthetic.synthetic_features` (class centre plus noise, a
fraction of nodes confused), generated block by block.
"""

from __future__ import annotations

import gzip
import zlib
from pathlib import Path
from typing import BinaryIO

import numpy as np
import scipy.sparse as sp

from ..errors import SourceError, UsageError
from .arrays import check_features, load_labels, load_npy
from .common import GraphSource, iter_blocks
from .synthetic import SyntheticSpec, synthetic_features

#: Text parsed per step. Peak parse memory is about 12 bytes per byte of text
#: (masks, int32 line numbers), so 8 MiB of text stays near 100 MB.
READ_BYTES = 8 << 20
#: A "line" longer than this without a newline means the file is not an edge list.
MAX_LINE_BYTES = 1 << 20
#: 18 decimal digits always fit an int64.
MAX_ID_DIGITS = 18
#: Rounds of neighbour-majority smoothing for generated labels (8 classes, seed 0). More
#: rounds raise homophily but let large classes swallow small ones. Edges inside a class,
#: rounds 1/2/3/4/6: soc-Slashdot0902 23/27/32/40/79 % (smallest class 12/11/10/8/6 %),
#: facebook_combined 34/80/88/91/93 % (smallest class 8/5/3/3/2 %). 3 balances the two.
SMOOTHING_ROUNDS = 3

_GZIP_MAGIC = b"\x1f\x8b"


def edgelist_source(path: str | Path, *, directed: bool, feat_dim: int, classes: int,
                    features: str | Path | None, labels: str | Path | None,
                    seed: int) -> GraphSource:
    path = Path(path)
    if features is None and feat_dim < 1:
        raise UsageError(f"feat_dim={feat_dim}: give at least 1")
    if labels is None and not 2 <= classes <= 1 << 16:
        raise UsageError(f"classes={classes}: give between 2 and 65536")
    src, dst, info = read_edge_list(path)
    ids, inverse = np.unique(np.concatenate([src, dst]), return_inverse=True)
    del src, dst
    n = int(ids.size)
    if n < 2:
        raise SourceError(f"{path}: the edges name only {n} distinct node(s); a graph needs at "
                          "least 2")
    e = inverse.size // 2
    src, dst = inverse[:e], inverse[e:]
    info.update(nodes=n, max_original_id=int(ids[-1]),
                ids_remapped=not (ids[0] == 0 and ids[-1] == n - 1))

    if labels is not None:
        lab_path = Path(labels)
        y = load_labels(lab_path)
        if y.shape[0] != n:
            raise SourceError(f"{lab_path} has {y.shape[0]} labels but {path} has {n} nodes "
                              "(distinct ids): give one label per node, in ascending order of "
                              "the original ids")
        y = np.asarray(y, dtype=np.int64)
        if y.size and y.min() < 0:
            raise SourceError(f"{lab_path}: label {int(y.min())} is negative: labels must be "
                              "0..C-1")
        classes = max(2, int(y.max()) + 1)
    else:
        y = homophilous_labels(n, src, dst, classes=classes, seed=seed)

    if features is not None:
        feat_path = Path(features)
        x = load_npy(feat_path, "features")
        check_features(x, feat_path)
        if x.shape[0] != n:
            raise SourceError(f"{feat_path} has {x.shape[0]} feature rows but {path} has {n} "
                              "nodes (distinct ids): give one row per node, in ascending order "
                              "of the original ids")
        blocks = iter_blocks(x)
        feat_dim = int(x.shape[1])
        where = str(feat_path)
    else:
        # The synthetic generator's feature model; only nodes/feat_dim/classes/seed matter.
        spec = SyntheticSpec(nodes=n, feat_dim=feat_dim, classes=classes, seed=seed)
        blocks = synthetic_features(spec, y)
        where = str(path)
    return GraphSource(
        num_nodes=n, src=src, dst=dst, directed=directed, features=blocks, feat_dim=feat_dim,
        labels=y, splits=None,
        source={"kind": "edgelist", "path": str(path.resolve()), **info,
                "features": str(Path(features).resolve()) if features is not None else "generated",
                "labels": str(Path(labels).resolve()) if labels is not None else "generated",
                "classes": classes, "seed": seed},
        where=where)


def read_edge_list(path: Path) -> tuple[np.ndarray, np.ndarray, dict]:
    """``(src, dst, info)`` with the original int64 ids, in file order."""
    try:
        with open(path, "rb") as f:
            compressed = f.read(2) == _GZIP_MAGIC
    except FileNotFoundError as err:
        raise SourceError(f"edge list {path} does not exist: check the path") from err
    except OSError as err:
        raise SourceError(f"edge list {path} cannot be read ({err})") from err
    pairs: list[np.ndarray] = []
    line = 1  # number of the first line of the text not parsed yet
    with (gzip.open(path, "rb") if compressed else open(path, "rb")) as f:
        carry = b""
        while True:
            buf = _read(f, path, line, compressed)
            if buf:
                text = carry + buf
                cut = text.rfind(b"\n") + 1
                text, carry = text[:cut], text[cut:]
                if len(carry) > MAX_LINE_BYTES:
                    at = line + text.count(b"\n")
                    raise SourceError(f"{path}, line {at}: longer than "
                                      f"{MAX_LINE_BYTES} bytes without a newline: this is not "
                                      "a text edge list")
            else:
                text, carry = carry, b""
            if text:
                pairs.append(_parse(text, line, path))
                line += text.count(b"\n")
            if not buf:
                break
    edges = np.concatenate(pairs) if pairs else np.zeros((0, 2), dtype=np.int64)
    if edges.shape[0] == 0:
        raise SourceError(f"edge list {path} holds no edges (only comments or blank lines): "
                          "check the file")
    return edges[:, 0].copy(), edges[:, 1].copy(), {"edges_read": int(edges.shape[0]),
                                                    "gzip": compressed}


def _read(f: BinaryIO, path: Path, line: int, compressed: bool) -> bytes:
    try:
        return f.read(READ_BYTES)
    except (EOFError, zlib.error, OSError) as err:
        what = "gzip stream" if compressed else "file"
        raise SourceError(f"edge list {path}: the {what} is truncated or corrupt near line "
                          f"{line} ({type(err).__name__}: {err}): re-download it") from err


def _parse(text: bytes, first_line: int, path: Path) -> np.ndarray:
    """``[k, 2]`` int64 pairs from whole lines of text (numbered from ``first_line``)."""
    b = np.frombuffer(text, dtype=np.uint8)
    nl = b == 10
    ws = nl | (b == 32) | (b == 9) | (b == 13)
    line_of = np.cumsum(nl, dtype=np.int32)
    line_of -= nl  # a newline belongs to the line it ends
    n_lines = int(line_of[-1]) + 1
    start = ~ws
    start[1:] &= ws[:-1]
    starts = np.flatnonzero(start)
    tok_line = line_of[starts]
    first = np.ones(starts.size, dtype=bool)
    first[1:] = tok_line[1:] != tok_line[:-1]
    comment = np.zeros(n_lines, dtype=bool)
    comment[tok_line[first & (b[starts] == ord("#"))]] = True
    data = ~ws
    if comment.any():
        data &= ~comment[line_of]
        tok_line = tok_line[~comment[tok_line]]
    fields = np.bincount(tok_line, minlength=n_lines)
    bad = np.flatnonzero((fields != 0) & (fields != 2))
    if bad.size:
        i = int(bad[0])
        raise SourceError(f"{path}, line {first_line + i}: {_line(text, nl, i)!r} has "
                          f"{int(fields[i])} fields; each line must be exactly two node ids "
                          "'src dst' (weights or other columns are not supported)")
    nondigit = data & ((b < ord("0")) | (b > ord("9")))
    if nondigit.any():
        i = int(line_of[int(np.argmax(nondigit))])
        raise SourceError(f"{path}, line {first_line + i}: {_line(text, nl, i)!r} is not two "
                          "non-negative integer node ids; fix or remove that line")
    ends = np.flatnonzero(data[:-1] & ~data[1:]) + 1
    if data[-1]:
        ends = np.append(ends, b.size)
    lengths = ends - np.flatnonzero(data & np.concatenate([[True], ~data[:-1]]))
    if lengths.size and lengths.max() > MAX_ID_DIGITS:
        k = int(np.argmax(lengths))
        i = int(line_of[ends[k] - 1])
        raise SourceError(f"{path}, line {first_line + i}: node id of {int(lengths[k])} digits "
                          f"is too large (at most {MAX_ID_DIGITS} digits)")
    if lengths.size == 0:  # only comments and blank lines (fromstring would invent a value)
        return np.zeros((0, 2), dtype=np.int64)
    if comment.any():
        clean = b.copy()
        clean[comment[line_of] & ~nl] = ord(" ")
        text = clean.tobytes()
    values = np.fromstring(text, dtype=np.int64, sep=" ")
    # Every byte was checked above, so the parser must have consumed all tokens.
    assert values.size == lengths.size, (values.size, lengths.size)
    return values.reshape(-1, 2)


def _line(text: bytes, nl: np.ndarray, i: int) -> str:
    """Line ``i`` (0-based) of ``text``, decoded for an error message, at most 80 chars."""
    breaks = np.flatnonzero(nl)
    lo = int(breaks[i - 1]) + 1 if i > 0 else 0
    hi = int(breaks[i]) if i < breaks.size else len(text)
    return text[lo:hi].decode("utf-8", errors="replace").rstrip("\r")[:80]


def homophilous_labels(num_nodes: int, src: np.ndarray, dst: np.ndarray, *, classes: int,
                       seed: int, rounds: int = SMOOTHING_ROUNDS) -> np.ndarray:
    """Random labels smoothed by neighbour majority (edges read as undirected), so that
    neighbours tend to share a class. Deterministic for ``seed``. A node's own label wins
    a tie it takes part in, other ties are broken at random (breaking them by class id
    would grow the low classes), and nodes without neighbours keep their random label."""
    rng = np.random.default_rng([seed, 0xED6E])
    labels = rng.integers(0, classes, size=num_nodes, dtype=np.int64)
    adj = sp.csr_matrix((np.ones(src.size, dtype=np.float32), (src, dst)),
                        shape=(num_nodes, num_nodes))
    adj = (adj + adj.T).tocsr()
    adj.data[:] = 1.0  # one vote per neighbour, however often the edge is listed
    for _ in range(rounds):
        best = np.zeros(num_nodes, dtype=np.float32)
        new = labels.copy()
        for c in range(classes):
            own = labels == c
            votes = adj @ own.astype(np.float32) + np.float32(0.5) * own
            votes += rng.random(num_nodes, dtype=np.float32) * np.float32(0.25)
            better = votes > best
            best[better] = votes[better]
            new[better] = c
        labels = new
    return labels

import pytest

from oocstore.errors import FormatError, OocError
from oocstore.store import ALIGN, CHUNK_BYTES, FORMAT_VERSION, ArrayMeta, GraphMeta, Store, StoreMeta
from oocstore.store.catalog import Catalog
from oocstore.store.format import align_up


def meta(**kw) -> ArrayMeta:
    base = dict(name="features", dtype="float32", shape=(10, 4), file="arrays/features.1.bin")
    return ArrayMeta(**{**base, **kw})


def test_array_meta_round_trip():
    m = meta(offset=ALIGN, chunk_bytes=8192, version=3)
    d = m.to_dict()
    assert d["shape"] == [10, 4]
    assert ArrayMeta.from_dict(d) == m
    assert m.nbytes == 160 and m.row_bytes == 16 and m.num_chunks == 1
    assert meta(shape=(0, 4)).num_chunks == 0


def test_array_meta_ignores_unknown_keys_from_newer_writers():
    d = {**meta().to_dict(), "added_later": 1}
    assert ArrayMeta.from_dict(d) == meta()


def test_array_meta_missing_key_names_entry_and_fix():
    d = meta().to_dict()
    del d["dtype"]
    with pytest.raises(FormatError, match=r"array/features lacks \['dtype'\].*oocstore ingest"):
        ArrayMeta.from_dict(d)


@pytest.mark.parametrize("file", ["/etc/passwd", "../outside.bin", "arrays/../../x.bin", "",
                                  "arrays\\..\\x.bin"])
def test_files_outside_the_store_refused(file):
    with pytest.raises(FormatError, match="outside the store"):
        meta(file=file)


@pytest.mark.parametrize("dtype", ["complex64", "object", "float128", "<U4"])
def test_bad_dtype_refused(dtype):
    with pytest.raises(FormatError, match="unsupported dtype"):
        meta(dtype=dtype)


@pytest.mark.parametrize("offset", [1, 512, ALIGN + 8, -ALIGN])
def test_unaligned_offset_refused(offset):
    with pytest.raises(FormatError, match="not 4096-aligned"):
        meta(offset=offset)


def test_negative_shape_and_bad_chunk_refused():
    with pytest.raises(FormatError, match="negative dimension"):
        meta(shape=(-1, 4))
    with pytest.raises(FormatError, match="chunk_bytes"):
        meta(chunk_bytes=0)


def test_graph_and_store_meta_round_trip():
    g = GraphMeta(num_nodes=5, num_edges=8, directed=True)
    assert GraphMeta.from_dict(g.to_dict()) == g
    s = StoreMeta(version=4, source={"kind": "synthetic", "seed": 1})
    assert StoreMeta.from_dict(s.to_dict()) == s
    assert s.format_version == FORMAT_VERSION


@pytest.mark.parametrize("version", [FORMAT_VERSION + 1, 0, None, "1"])
def test_unknown_format_version_refused_with_fix(version):
    d = {**StoreMeta().to_dict(), "format_version": version}
    with pytest.raises(FormatError, match="not supported.*install the oocstore release.*re-create"):
        StoreMeta.from_dict(d)


def test_opening_store_of_other_version_refused(small_store):
    cat = Catalog(small_store, readonly=False)
    cat.commit({"meta": {**cat.get("meta"), "format_version": FORMAT_VERSION + 1}})
    cat.close()
    with pytest.raises(FormatError, match=f"version {FORMAT_VERSION + 1} is not supported"):
        Store(small_store)


def test_format_error_is_value_error_and_ooc_error():
    with pytest.raises(ValueError):
        meta(dtype="complex64")
    with pytest.raises(OocError):
        meta(dtype="complex64")


def test_constants():
    assert ALIGN == 4096 and CHUNK_BYTES == 4 << 20 and CHUNK_BYTES % ALIGN == 0
    assert align_up(0) == 0 and align_up(1) == ALIGN and align_up(ALIGN) == ALIGN

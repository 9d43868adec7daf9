import lmdb
import pytest

from oocstore.errors import DiskFullError, FormatError, StoreNotFoundError, UsageError
from oocstore.store.catalog import CATALOG_DIR, Catalog, decode, encode


@pytest.fixture
def cat(tmp_path):
    c = Catalog(tmp_path, readonly=False, create=True)
    yield c
    c.close()


def test_commit_get_items_and_prefix(cat):
    cat.commit({"array/b": {"x": 2}, "array/a": [1, 2], "meta": {"version": 1}, "arrayz": 0})
    assert cat.get("array/a") == [1, 2]
    assert cat.get("missing", 7) == 7
    assert [k for k, _ in cat.items("array/")] == ["array/a", "array/b"]
    assert set(cat.dump()) == {"array/a", "array/b", "arrayz", "meta"}
    cat.commit({"array/c": 3}, deletes={"array/a", "never-there"})
    assert [k for k, _ in cat.items("array/")] == ["array/b", "array/c"]


def test_values_are_sorted_compact_json():
    assert encode({"b": 1, "a": [1, 2]}) == b'{"a":[1,2],"b":1}'
    assert decode(b'{"a":1}', "k", None) == {"a": 1}


def test_invalid_json_named(cat, tmp_path):
    with cat.env.begin(write=True) as txn:
        txn.put(b"meta", b"{not json")
    with pytest.raises(FormatError, match=r"catalog entry 'meta' in .*catalog\.lmdb is not valid JSON"):
        cat.get("meta")


def test_not_a_store(tmp_path):
    with pytest.raises(StoreNotFoundError, match=f"no {CATALOG_DIR}/data.mdb.*oocstore ingest"):
        Catalog(tmp_path / "x", readonly=True)


def test_readonly_handle_shares_env_and_refuses_writes(cat, tmp_path):
    cat.commit({"k": 1})
    ro = Catalog(tmp_path, readonly=True)  # same process: shares the writable environment
    try:
        assert ro.env is cat.env
        assert ro.get("k") == 1
        with pytest.raises(UsageError, match="opened read-only"):
            ro.commit({"k": 2})
        cat.commit({"k": 3})
        assert ro.get("k") == 3
    finally:
        ro.close()
        ro.close()  # idempotent
    assert cat.get("k") == 3  # the writer's handle still works


def test_environment_closes_with_last_user(tmp_path):
    a = Catalog(tmp_path, readonly=False, create=True)
    a.commit({"k": 1})
    b = Catalog(tmp_path, readonly=True)
    a.close()
    assert b.get("k") == 1
    b.close()
    c = Catalog(tmp_path, readonly=True)  # a fresh, read-only environment
    try:
        assert c.env is not b.env and c.get("k") == 1
        with pytest.raises(UsageError, match="already open read-only in this process"):
            Catalog(tmp_path, readonly=False)
    finally:
        c.close()


class _FullEnv:
    def begin(self, write=False):
        raise lmdb.Error("mdb_txn_commit: No space left on device")

    def sync(self, force):
        pass


def test_disk_full_at_commit_is_disk_full_error(cat):
    real = cat.env
    cat.env = _FullEnv()
    try:
        with pytest.raises(DiskFullError, match="disk full while committing the catalog"):
            cat.commit({"k": 1})
    finally:
        cat.env = real
    assert cat.get("k") is None


def test_other_lmdb_errors_pass_through(cat):
    class Broken(_FullEnv):
        def begin(self, write=False):
            raise lmdb.CorruptedError("corrupt")

    real = cat.env
    cat.env = Broken()
    try:
        with pytest.raises(lmdb.CorruptedError):
            cat.commit({"k": 1})
    finally:
        cat.env = real

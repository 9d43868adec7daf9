"""In-memory training (the parity reference) reads features and labels with their
checksums checked, as the out-of-core loader does: a flipped bit is an error, not a
silently different model."""

import pytest

from oocstore import Store
from oocstore.errors import ChecksumError
from oocstore.ingest import build_store
from oocstore.ingest.synthetic import SyntheticSpec, synthetic_source
from oocstore.train.loop import InMemoryFeatures


@pytest.mark.parametrize("array", ["features", "labels"])
def test_a_flipped_bit_is_refused_by_in_memory_training(tmp_path, array):
    build_store(tmp_path / "s", synthetic_source(SyntheticSpec(nodes=300, feat_dim=8, seed=0)))
    with Store(tmp_path / "s") as store:
        InMemoryFeatures(store)  # intact: reads
        path = store.file_path(store.array_meta(array))
    with open(path, "r+b") as f:
        b = f.read(1)
        f.seek(0)
        f.write(bytes([b[0] ^ 0x10]))
    with Store(tmp_path / "s") as store:
        with pytest.raises(ChecksumError, match=array):
            InMemoryFeatures(store)

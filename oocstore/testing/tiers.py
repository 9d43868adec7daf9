"""The conformance suite of the tier contract (:mod:`oocstore.tiers.base`), shipped with
the package so that a tier written outside oocstore is checked by the same tests as the
built-in ones (as zarr ships ``zarr.testing.store.StoreTests``).

Subclass :class:`TierConformance` in a pytest module and implement :meth:`make`, which
returns the tier and its *oracle*: a plain in-memory array whose row ``i`` is what slot
``i`` must gather. A tier conforms when its subclass passes:

* ``gather`` of random (and repeated, and empty) slots equals the oracle rows;
* a slot outside the tier raises ``IndexError`` naming the tier, and leaves ``out`` and
  the counters as they were;
* ``hits`` counts rows gathered; ``bytes_read`` / ``useful_bytes`` add up to what the tier
  moved from storage (0 for memory tiers; :meth:`expected_io` says how much for a tier
  that reads storage, e.g. 4 KiB-widened spans for O_DIRECT tiers).

Example::

    from oocstore.testing import TierConformance

    class TestMyTier(TierConformance):
        def make(self, request):
            rows = np.random.default_rng(0).standard_normal((100, 8)).astype(np.float32)
            return MyTier(rows), rows

Needs pytest (a test dependency, not a runtime one). For pytest's detailed assertion
messages, call ``pytest.register_assert_rewrite("oocstore.testing")`` in a ``conftest.py``
before this module is imported.
"""

from __future__ import annotations

import numpy as np
import pytest

__all__ = ["TierConformance"]


def _out(tier, n: int) -> np.ndarray:
    """An output buffer for ``n`` rows of ``tier`` (shape and dtype of its oracle)."""
    return np.empty((n,) + tier.oracle.shape[1:], dtype=tier.oracle.dtype)


class TierConformance:
    """The tests every tier passes; a subclass implements :meth:`make` (and, for a tier
    that reads storage, :meth:`expected_io`) or overrides the ``tier`` fixture."""

    disk = False  # does the tier read from storage (bytes_read > 0)?

    def make(self, request) -> tuple[object, np.ndarray]:
        """``(tier, oracle)``: ``oracle[i]`` is the row slot ``i`` must gather."""
        raise NotImplementedError

    def expected_io(self, tier, slots: np.ndarray) -> tuple[int, int]:
        """(bytes_read, useful_bytes) that gathering ``slots`` adds to the counters."""
        return 0, 0

    @pytest.fixture
    def tier(self, request):
        tier, oracle = self.make(request)
        tier.oracle = oracle
        yield tier
        tier.close()

    # -- gather -----------------------------------------------------------------------
    def test_num_rows_matches_oracle(self, tier):
        assert tier.num_rows == tier.oracle.shape[0] > 0
        assert tier.nbytes >= 0

    def test_random_slots_equal_the_oracle(self, tier):
        rng = np.random.default_rng(1)
        for size in (1, 7, 17, 200, 3 * tier.num_rows):
            slots = rng.integers(0, tier.num_rows, size)
            out = _out(tier, size)
            tier.gather(slots, out)
            np.testing.assert_array_equal(out, tier.oracle[slots])

    def test_every_slot_once_in_order(self, tier):
        slots = np.arange(tier.num_rows)
        out = _out(tier, slots.size)
        tier.gather(slots, out)
        np.testing.assert_array_equal(out, tier.oracle)

    def test_first_and_last_slot_and_int32_slots(self, tier):
        slots = np.array([tier.num_rows - 1, 0, tier.num_rows - 1], dtype=np.int32)
        out = _out(tier, 3)
        tier.gather(slots, out)
        np.testing.assert_array_equal(out, tier.oracle[slots])

    def test_empty_gather_is_a_no_op(self, tier):
        before = tier.stats()
        tier.gather(np.zeros(0, dtype=np.int64), _out(tier, 0))
        assert tier.stats() == before

    # -- out of range ----------------------------------------------------------------
    @pytest.mark.parametrize("where", ["negative", "past_end", "far"])
    def test_out_of_range_slot_raises_index_error_naming_the_tier(self, tier, where):
        bad = {"negative": -1, "past_end": tier.num_rows, "far": 10**12}[where]
        slots = np.array([0, bad, 1], dtype=np.int64)
        out = _out(tier, 3)
        out[...] = 42
        before = tier.stats()
        with pytest.raises(IndexError, match=rf"^{tier.name} tier: slot {bad} outside "
                                             rf"0\.\.{tier.num_rows - 1}"):
            tier.gather(slots, out)
        assert (out == 42).all()  # nothing written
        assert tier.stats() == before  # nothing counted

    # -- counters --------------------------------------------------------------------
    def test_counters_add_up(self, tier):
        rng = np.random.default_rng(3)
        s0 = tier.stats()
        assert set(s0) >= {"hits", "bytes_read", "useful_bytes", "nbytes"}
        hits, read, useful = s0["hits"], s0["bytes_read"], s0["useful_bytes"]
        for size in (5, 64, 301):
            slots = rng.integers(0, tier.num_rows, size)
            tier.gather(slots, _out(tier, size))
            dr, du = self.expected_io(tier, slots)
            hits, read, useful = hits + size, read + dr, useful + du
            s = tier.stats()
            assert (s["hits"], s["bytes_read"], s["useful_bytes"]) == (hits, read, useful)
        if self.disk:
            assert s["bytes_read"] >= s["useful_bytes"] > 0
        else:
            assert s["bytes_read"] == s["useful_bytes"] == 0

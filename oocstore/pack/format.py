"""The pack format: where every input row of every planned batch comes from.

A pack is made from one plan (``oocstore pack``) and lives in the store under the same
commit protocol as everything else.

``pack/<name>`` (catalog entry)
    :class:`PackMeta`: the plan it was made from (and that plan's commit version, so a
    re-sampled plan invalidates the pack), tier sizes, segment length, achieved disk
    blowup, expected read amplification, and the minimum working set training needs.

``pack/<name>/gpu_ids``, ``pack/<name>/cpu_ids`` (int64 ``[rows]``)
    The nodes held by the GPU and CPU tiers, in slot order (hottest first).

``pack/<name>/gpu_rows``, ``pack/<name>/cpu_rows`` (``[rows, D]``)
    Their feature rows, so filling a tier at start-up is one sequential read.

``pack/<name>/rows`` (``[packed_rows, D]``)
    The SSD tier: segments back to back. A segment holds the distinct cold rows of
    ``segment_batches`` consecutive batches of the plan, in first-use order, so each
    segment is read with one contiguous ``O_DIRECT`` request (the request is widened to
    4 KiB boundaries; the widening is the only read amplification).

``pack/<name>/segments`` (int64 ``[num_segments, 3]``)
    Per segment: first row in ``rows``, number of rows, first batch (plan index row).

``pack/<name>/segment_crc`` (uint32 ``[num_segments]``)
    CRC-32 (zlib) of each segment's bytes exactly (``rows`` bytes ``[first row x
    row_bytes, (first row + rows) x row_bytes)``): the loader checks a segment with one
    CRC over the buffer it just read, with no extra read. Packs written before this
    array existed lack it; their segments are checked against the file's 4 MiB chunk
    checksums instead.

``pack/<name>/batch_segment`` (int64 ``[total_batches]``)
    The segment of each plan batch, ``-1`` where the disk-blowup cap left the batch
    unpacked (its cold rows are then read one by one from the base feature array).

``pack/<name>/inserts`` (int64 ``[n, 2]``), ``pack/<name>/insert_offsets`` (int64
``[total_batches + 1]``) — only with a scheduled CPU tier (``policy`` ``"belady"``,
``"s3fifo"`` or ``"sieve"``, :mod:`.policies`; readers go by these arrays, not the name)
    The CPU tier then follows a schedule worked out offline by simulating the policy over
    the plan's known future: it starts every epoch holding ``cpu_rows`` and, after batch
    ``i`` is assembled, row ``position - first position of batch i`` of that batch is
    copied into CPU slot ``slot`` for each insert ``(position, slot)`` of batch ``i``.

``pack/<name>/tier`` (uint8) and ``pack/<name>/slot`` (int32), one entry per input
position of every batch, batches in plan index order (batch ``i`` starts at the sum of
``num_input`` over batches before it)
    :data:`GPU` / :data:`CPU`: slot in that tier; :data:`SSD`: row within the batch's
    segment; :data:`BASE`: read the node's row from the base feature array (slot -1).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from ..checked_read import ROWS_SCRATCH
from ..store.format import VersionedEntry

#: Version of the pack layout described above. Readers refuse other versions.
PACK_FORMAT_VERSION = 1

GPU, CPU, SSD, BASE = 0, 1, 2, 3
TIER_NAMES = ("gpu", "cpu", "ssd", "base")


def pack_key(name: str) -> str:
    return f"pack/{name}"


def pack_array_names(name: str) -> dict[str, str]:
    parts = ("gpu_ids", "gpu_rows", "cpu_ids", "cpu_rows", "rows", "segments", "segment_crc",
             "batch_segment",
             "tier", "slot", "inserts", "insert_offsets")
    return {p: f"pack/{name}/{p}" for p in parts}


#: Scratch buffer of each checksum-checked per-batch reader (``oocstore/checked_read.py``).
CHECK_SCRATCH = ROWS_SCRATCH


def reader_table_bytes(*, total_batches: int, index_columns: int, epochs: int,
                       num_segments: int, positions: int, inserts: int, scheduled: bool,
                       plan_data_bytes: int) -> int:
    """CPU memory a tiered reader holds for the whole run besides tiers and buffers:
    the plan's index (``8 x index_columns`` bytes per batch) and epoch starts, the
    per-batch position and segment tables, a scheduled CPU tier's insert offsets, the segment table
    and checksums, and a checksum scratch of at most 1 MiB for each of the arrays read
    per batch (plan records, tier, slot, inserts). One formula for the packer (the
    minimum working set it records) and the reader (what it charges)."""
    tb = int(total_batches)
    per_batch = 8 * index_columns + 8 + 8 + (8 if scheduled else 0)  # index, pos, batch_segment
    scratch = (min(CHECK_SCRATCH, plan_data_bytes) + min(CHECK_SCRATCH, positions)
               + min(CHECK_SCRATCH, 4 * positions)
               + (min(CHECK_SCRATCH, 16 * inserts) if scheduled else 0))
    chunks = 4 + (plan_data_bytes + 5 * positions + 16 * inserts) // (4 << 20)  # checked maps
    return (tb * per_batch + 16 + 16 * (epochs + 1) + 28 * num_segments + scratch + chunks)


def plan_record_bytes(max_record_elems: int, node_itemsize: int, batch_size: int) -> int:
    """CPU memory one batch's plan record takes while the batch is in flight: the record
    as read (``node_itemsize`` per element) and decoded to int64, and the seeds' labels
    (as gathered and as int64)."""
    return int(max_record_elems) * (8 + int(node_itemsize)) + 16 * int(batch_size)


@dataclass(frozen=True)
class PackMeta(VersionedEntry):
    """The catalog entry of one pack (``pack/<name>``)."""

    KIND, VERSION = "pack", PACK_FORMAT_VERSION
    FIX = "re-pack it with `oocstore pack ... --name {name} --overwrite`"

    name: str
    plan: str
    plan_version: int  # commit version of the plan's arrays when the pack was made
    features: str  # the base feature array
    dtype: str
    feat_dim: int
    row_bytes: int
    gpu_rows: int
    cpu_rows: int
    policy: str  # "static": hottest rows for the whole run; else a scheduled CPU tier
    segment_batches: int
    num_segments: int
    packed_rows: int
    packed_batches: int
    total_batches: int
    max_disk_blowup: float
    blowup: float  # packed bytes / base feature bytes, over every epoch of the plan
    expected_read_amplification: float
    # cpu, gpu, largest_segment_bytes, staging_bytes, ... tables_bytes (the reader's
    # per-batch tables), plan_record_bytes (one batch's record in flight); the last two
    # are absent from packs written before they were charged
    min_working_set: dict[str, int]
    largest_batch_rows: int
    arrays: dict[str, str] = field(default_factory=dict)
    stats: dict[str, Any] = field(default_factory=dict)
    # Leading plan epochs whose every batch is packed: under a tight blowup cap the loader
    # cycles only these (fewer distinct epochs instead of slow row reads).
    packed_epochs: int = 0
    format_version: int = PACK_FORMAT_VERSION

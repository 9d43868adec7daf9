import threading
import time
import traceback

import pytest

from oocstore.errors import StageTimeoutError
from oocstore.pipeline import Pipeline


def live_stage_threads():
    return [t for t in threading.enumerate() if t.name.startswith("stage-")]


def test_items_flow_in_order_through_stages():
    p = Pipeline(range(50), [("stage-a", lambda x: x * 2), ("stage-b", lambda x: x + 1)], depth=3)
    assert list(p) == [2 * i + 1 for i in range(50)]
    assert not live_stage_threads()
    assert set(p.stage_seconds) == {"stage-a", "stage-b"}


def exploding(x):
    if x == 7:
        raise ValueError("bad item 7")
    return x


def test_stage_failure_reraises_with_original_traceback():
    p = Pipeline(range(20), [("stage-a", exploding), ("stage-b", lambda x: x)], depth=2)
    seen = []
    with pytest.raises(ValueError, match="bad item 7") as info:
        for x in p:
            seen.append(x)
    assert seen == list(range(7))
    frames = [f.name for f in traceback.extract_tb(info.value.__traceback__)]
    assert "exploding" in frames
    assert not live_stage_threads()


def test_stalled_stage_times_out_naming_it():
    def slow(x):
        time.sleep(5 if x == 2 else 0)
        return x

    p = Pipeline(range(5), [("stage-slow", slow)], depth=1, timeout=0.5)
    got = []
    with pytest.raises(StageTimeoutError, match=r"stage 'stage-slow' has been busy for"):
        for x in p:
            got.append(x)
    assert got == [0, 1]


def test_close_mid_stream_leaves_no_thread():
    p = Pipeline(iter(range(10_000)), [("stage-a", lambda x: x), ("stage-b", lambda x: x)], depth=2)
    it = iter(p)
    assert [next(it) for _ in range(3)] == [0, 1, 2]
    p.close()
    p.close()  # idempotent
    assert not live_stage_threads()


def test_depth_must_be_positive():
    with pytest.raises(ValueError, match="depth 0"):
        Pipeline(range(3), [("stage-a", lambda x: x)], depth=0)

"""Training images streamed from the scene store, inside the CPU budget.

A scene ingested from photographs keeps its images in the store (uint8 [H, W, 3] per
view, CRC-checked on read: ``Scene.read_image``). A training run never holds them all:
:class:`ImageStream` reads the images of the run's view sequence, in step order, on a
background thread (:class:`~oocstore.pipeline.Pipeline`, thread ``oocstore-gs-images``,
the same machinery as the block prefetch) at most ``depth`` images ahead. Charged to the
CPU budget, before the first read (:func:`image_buffer_bytes`): ``depth`` images queued,
one being read, one the step holds, one for evaluation (:meth:`ImageStream.read`).
Thousands of images therefore cost a few images of host memory, whatever their number.

A damaged image raises :class:`~oocstore.errors.ChecksumError` in the training loop (the
pipeline re-raises the reader's exception), naming the scene, the image and its file.
"""

from __future__ import annotations

from typing import Iterator, Sequence

import numpy as np

from oocstore.budget import BudgetAccountant
from oocstore.pipeline import Pipeline

#: Images beside the queued ones: the one being read, the one in use, one for evaluation.
IMAGES_IN_HAND = 3


def image_buffer_bytes(scene, depth: int) -> int:
    """CPU bytes an :class:`ImageStream` of ``depth`` charges."""
    return (depth + IMAGES_IN_HAND) * int(scene.image_bytes)


def image_charge(scene, depth: int) -> tuple[str, int, str, str]:
    """The stream's budget charge as ``(tier, bytes, what, fix)``."""
    return ("cpu", image_buffer_bytes(scene, depth),
            f"image prefetch buffers ({depth} + {IMAGES_IN_HAND} images of "
            f"{scene.image_bytes} bytes)",
            "lower --prefetch-depth, raise --cpu-budget, or re-ingest with a larger "
            "--images-downscale")


class ImageStream:
    """The images of ``views`` (one per training step), in order, read ahead."""

    def __init__(self, scene, views: Sequence[int], *, accountant: BudgetAccountant,
                 depth: int = 2):
        self.scene = scene
        self.views = np.asarray(views, dtype=np.int64)
        self.depth = max(1, int(depth))
        tier, nbytes, what, fix = image_charge(scene, self.depth)
        self._charge = accountant.charge(tier, nbytes, what, fix=fix)
        self.bytes_read = 0
        self.pipe = Pipeline(enumerate(self.views.tolist()),
                             [("oocstore-gs-images", self._read)], depth=self.depth)
        self._it: Iterator = iter(self.pipe)
        self.taken = 0

    def _read(self, item):
        i, v = item
        img = self.scene.read_image(int(v))
        return i, int(v), img

    def next(self, view: int) -> np.ndarray:
        """The next step's image; ``view`` must be the plan's view of that step."""
        i, v, img = next(self._it)
        if i != self.taken or v != int(view):
            raise RuntimeError(f"image stream out of step: got image {i} of view {v}, the "
                               f"loop is at step {self.taken} of view {view}")
        self.taken += 1
        self.bytes_read += img.nbytes
        return img

    def read(self, view: int) -> np.ndarray:
        """One image outside the sequence (evaluation), in the slot charged for it."""
        img = self.scene.read_image(int(view))
        self.bytes_read += img.nbytes
        return img

    @property
    def wait_seconds(self) -> float:
        """Time the training loop waited for an image (the prefetch did not keep up)."""
        return self.pipe.wait_seconds

    def close(self) -> None:
        self.pipe.close()
        self._charge.release()

    def __enter__(self) -> "ImageStream":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

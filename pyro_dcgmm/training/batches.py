"""Where the training data live, and how mini-batches reach the device.

``TrainConfig.data_placement`` chooses:

- ``"device"``: the training set is copied to the device once; every epoch's order is moved there
  once and each mini-batch is gathered on the device, so a step needs no host-to-device copy.
- ``"host"``: the set stays in host memory (pinned, on a GPU) and streams: each mini-batch is
  gathered on the host into one of two pinned buffers and copied on a side CUDA stream, the next
  batch's copy issued before the current step runs, so copies overlap compute.  On a CPU this is
  the same gather without a copy.  For data sets larger than the device's memory.
- ``"auto"``: ``"device"`` when the set takes at most :data:`DEVICE_DATA_FRACTION` of the device's
  free memory (always on a CPU), else ``"host"``.

Both give the same batches in the same order, so training does not depend on the placement (tested).
"""

from __future__ import annotations

import torch

DEVICE_DATA_FRACTION = 0.5  # of the free device memory the training set may take before it streams


def resolved_placement(placement: str, images: torch.Tensor, device: torch.device, dtype) -> str:
    """``"device"`` or ``"host"`` for ``placement`` (``"auto"`` decided by the set's size)."""
    if placement != "auto":
        return placement
    if device.type != "cuda":
        return "device"
    size = images.numel() * torch.empty((), dtype=dtype).element_size()
    free, _ = torch.cuda.mem_get_info(device)
    return "device" if size <= DEVICE_DATA_FRACTION * free else "host"


class BatchSource:
    """The training images (N, C, H, W) and labels (N,) or ``None``, served by index on ``device``.

    :param placement: ``"device"``, ``"host"`` or ``"auto"`` (see the module's text).
    """

    def __init__(self, images, labels, device: torch.device, dtype, placement: str = "auto"):
        self.device, self.dtype = device, dtype
        self.placement = resolved_placement(placement, images, device, dtype)
        home = device if self.placement == "device" else torch.device("cpu")
        self.images = images.to(home, dtype)
        self.labels = None if labels is None else labels.to(home)
        self.streams = self.placement == "host" and device.type == "cuda"
        if self.streams:
            self.copy_stream = torch.cuda.Stream(device)
            self._buffers = [PinnedBuffer(), PinnedBuffer()]  # one fills while the other is copied
        self._order, self._order_home, self._pending = None, None, None

    @property
    def num_data(self) -> int:
        return self.images.shape[0]

    def batch(self, order: torch.Tensor, start: int, size: int):
        """Images and labels at ``order[start : start + size]`` (``order``: the epoch's permutation,
        on the CPU), on the device."""
        pending = self._pending
        if pending is not None and pending[0] is order and pending[1:3] == (start, size):
            images, labels = self._arrived(pending[3])
        else:
            images, labels = self._fetch(self._index(order, start, size))
        self._pending = None
        return images, labels

    def prefetch(self, order: torch.Tensor, start: int, size: int) -> None:
        """Start bringing the batch at ``order[start : start + size]`` to the device (streaming only)."""
        if self.streams and start < len(order):
            self._pending = (order, start, size, self._send(self._index(order, start, size)))

    def subset(self, index: torch.Tensor):
        """Images and labels at ``index`` (CPU), on the device (for initialisation and re-seeding)."""
        return self._fetch(index.to(self.images.device))

    def _index(self, order: torch.Tensor, start: int, size: int) -> torch.Tensor:
        """The batch's indices where the data are: the epoch's order moves to the device once."""
        if self._order is not order:
            self._order, self._order_home = order, order.to(self.images.device)
        return self._order_home[start : start + size]

    def _fetch(self, index: torch.Tensor):
        if self.streams:
            return self._arrived(self._send(index))
        images = self.images[index].to(self.device, non_blocking=True)
        labels = None if self.labels is None else self.labels[index].to(self.device, non_blocking=True)
        return images, labels

    def _send(self, index: torch.Tensor):
        """Gather on the host into the next pinned buffer and copy it on the side stream."""
        self._buffers.reverse()
        images, labels = self._buffers[0].fill(self.images, self.labels, index)
        with torch.cuda.stream(self.copy_stream):
            images = images.to(self.device, non_blocking=True)
            labels = None if labels is None else labels.to(self.device, non_blocking=True)
            self._buffers[0].copied.record(self.copy_stream)
        return images, labels

    def _arrived(self, sent):
        """The batch a side-stream copy brings, once the compute stream may use it."""
        images, labels = sent
        current = torch.cuda.current_stream(self.device)
        current.wait_stream(self.copy_stream)
        for tensor in (images, labels):
            if tensor is not None:
                tensor.record_stream(current)
        return images, labels


class PinnedBuffer:
    """Pinned host memory that one streamed batch is gathered into, reused once its copy is done."""

    def __init__(self):
        self.images, self.labels, self.copied = None, None, None

    def fill(self, images: torch.Tensor, labels, index: torch.Tensor):
        """``images[index]`` and ``labels[index]`` gathered into this buffer (views of it)."""
        if self.copied is not None:
            self.copied.synchronize()  # the previous copy out of this buffer has finished
        n = len(index)
        if self.images is None or self.images.shape[0] < n:
            self.images = torch.empty((n, *images.shape[1:]), dtype=images.dtype).pin_memory()
            self.labels = None if labels is None else torch.empty(n, dtype=labels.dtype).pin_memory()
        torch.index_select(images, 0, index, out=self.images[:n])
        if labels is not None:
            torch.index_select(labels, 0, index, out=self.labels[:n])
        self.copied = torch.cuda.Event()
        return self.images[:n], None if labels is None else self.labels[:n]

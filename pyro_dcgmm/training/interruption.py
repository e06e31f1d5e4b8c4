"""Stopping a training run between two steps at Ctrl-C or SIGTERM."""

from __future__ import annotations

import signal
import threading

from pyro_dcgmm.training.distributed import distributed_rank_and_size


class Interruption:
    """Within its ``with`` block, the first Ctrl-C (SIGINT) or SIGTERM (what ``kill`` and job
    schedulers send) only sets :attr:`requested`, so that training stops between two steps and saves;
    a second one acts at once.  Off outside the main thread and in a process group (every process
    must stop at the same step)."""

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __enter__(self) -> Interruption:
        self.requested = False
        self._previous = {}
        alone = distributed_rank_and_size()[1] == 1
        if alone and threading.current_thread() is threading.main_thread():
            self._previous = {number: signal.signal(number, self._request) for number in self.SIGNALS}
        return self

    def _request(self, signum, frame) -> None:
        self.requested = True
        for number, previous in self._previous.items():
            signal.signal(number, previous)

    def __exit__(self, *exc) -> None:
        for number, previous in self._previous.items():
            signal.signal(number, previous)

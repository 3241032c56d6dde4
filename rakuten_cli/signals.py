"""How every command stops: SIGTERM (`docker stop`, Kubernetes, `kill`) and Ctrl-C call one callback.

Workers and watchers finish what they are doing (a batch, a measurement) and leave cleanly;
commands that read or write a stream treat SIGTERM like Ctrl-C (:func:`interrupt`).
"""

from __future__ import annotations

import signal
from collections.abc import Callable, Iterator
from contextlib import contextmanager

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT)


@contextmanager
def stopping_on_signals(stop: Callable[[], None], signals: tuple[signal.Signals, ...] = STOP_SIGNALS
                        ) -> Iterator[None]:
    """Call ``stop()`` on each of ``signals`` while the block runs; the previous handlers come back after.

    Outside the main thread (where Python cannot handle signals) the block runs as it is.
    """
    try:
        previous = {signum: signal.signal(signum, lambda *_: stop()) for signum in signals}
    except ValueError:
        yield
        return
    try:
        yield
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)


def interrupt() -> None:
    """A ``stop`` that ends the command like Ctrl-C (consumers commit and close, producers flush)."""
    raise KeyboardInterrupt


@contextmanager
def sigterm_interrupts() -> Iterator[None]:
    with stopping_on_signals(interrupt, (signal.SIGTERM,)):
        yield

"""What a run prints while an epoch trains: a progress bar on a terminal, plain lines in a log.

A progress bar redraws itself many times a second; written into a file (a redirected
``tscnet train``, a Slurm job's output) each redraw is one more line of noise. So the bar is shown
only when stderr is a terminal. Otherwise the run prints a plain line at each tenth of an epoch it
crosses, and at least once a minute, read at the engine's 20-step sync points::

    epoch 3/20  45%  123 img/s  loss 0.4100  ETA 2m10s
"""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

LINE_EVERY = 0.1  # of an epoch
LINE_AT_LEAST_S = 60.0  # a line at least this often (long epochs)


def is_terminal() -> bool:
    """Whether stderr (where the progress bars go) is a terminal."""
    try:
        return sys.stderr.isatty()
    except (AttributeError, ValueError):  # replaced or closed stream
        return False


def duration(seconds: float) -> str:
    """``2m10s``, ``1h05m``, ``42s``."""
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    if hours:
        return f"{hours}h{minutes:02d}m"
    return f"{minutes}m{secs:02d}s" if minutes else f"{secs}s"


class EpochLog:
    """One epoch's progress: ``tqdm`` on a terminal, periodic plain lines on stdout otherwise."""

    def __init__(self, total: int, initial: int, desc: str, enabled: bool) -> None:
        self.total, self.desc = total, desc
        self.bar: tqdm | None = None
        self.lines = enabled and not is_terminal()
        if enabled and not self.lines:
            self.bar = tqdm(total=total, initial=initial, desc=desc, unit="batch", dynamic_ncols=True, leave=False)
        self._tenth = int(initial / max(total, 1) / LINE_EVERY)
        self._last = time.monotonic()

    def sync(self, done: int, loss: float, top1: float, seen: int, elapsed: float) -> None:
        """At a sync point: ``done`` batches of the epoch, its running loss and top-1, images and
        seconds so far (both counted from the epoch's start, across a resume)."""
        rate = seen / max(elapsed, 1e-9)
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.3f}", acc=f"{top1:.1f}%", img_s=f"{rate:.0f}", refresh=False)
            return
        if not self.lines or done >= self.total:  # the epoch's own line follows
            return
        tenth, now = int(done / self.total / LINE_EVERY), time.monotonic()
        if tenth > self._tenth or now - self._last >= LINE_AT_LEAST_S:
            self._tenth, self._last = tenth, now
            eta = elapsed / max(done, 1) * (self.total - done)
            print(
                f"{self.desc}  {100 * done / self.total:3.0f}%  {rate:.0f} img/s  loss {loss:.4f}  ETA {duration(eta)}",
                flush=True,
            )

    def advance(self) -> None:
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()

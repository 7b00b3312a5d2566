"""Progress of a grid: a tqdm bar on a terminal, few plain lines otherwise, and the time left."""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Callable

# tqdm.auto: a notebook's widget bar in Jupyter (with ipywidgets), the text bar elsewhere.
from tqdm.auto import tqdm

from cvlib.cells import Cell
from cvlib.engine.estimate import Speed, TimeLeft
from cvlib.engine.hosts import usable_cores

if TYPE_CHECKING:
    from cvlib.tracking.journaled_writes import StoreHealth


# No progress line is longer (a cell's outcome, such as a long error, is cut short; the
# run keeps it whole).
LINE_LIMIT = 200
# Without a terminal, the cells that train are told at most this often.
HEARTBEAT_SECONDS = 30.0


def shortened(text: str, limit: int) -> str:
    """``text`` cut to at most ``limit`` characters, ending in "..." when cut."""
    return text if len(text) <= limit else text[:max(limit - 3, 0)] + "..."


def counted(count: int, noun: str) -> str:
    """``1 epoch``, ``2 epochs``: a count with its noun, plural unless one."""
    return f"{count} {noun}{'' if count == 1 else 's'}"


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


def time_of_day(unix_time: float) -> str:
    """A moment as HH:MM:SS, local time."""
    return time.strftime("%H:%M:%S", time.localtime(unix_time))


class StoreNotices:
    """Lines that say when the tracking server went away, and when it came back and had
    every write that waited in the journal meanwhile.

    Args:
        write: Where the lines go.
        outages_told: Outages already told of, that the store recovered from.
    """

    def __init__(self, write: Callable[[str], None], outages_told: int = 0):
        self.write = write
        self.away_since: float | None = None
        self._outages = outages_told
        self._told_waiting = False

    @property
    def note(self) -> str:
        """The outage in a few words, for progress lines ("" while the server answers)."""
        return ("" if self.away_since is None else
                f"tracking server unreachable since {time_of_day(self.away_since)}")

    def see(self, health: StoreHealth | None) -> None:
        """Tell what changed since the last health seen (None: no journal, nothing)."""
        if health is None:
            return
        if health.unreachable_since is not None and self.away_since is None:
            self.away_since = health.unreachable_since
            self.write(f"{self.note} ({health.reason}): training goes on, and its results "
                       f"wait in the local journal")
        self.away_since = health.unreachable_since
        if health.outages > self._outages and health.last_outage is not None:
            self._outages = health.outages
            away, catching_up, writes = health.last_outage
            self.write(f"tracking server back after {away:.1f} s away; the {writes} writes "
                       f"journaled meanwhile were sent in {catching_up:.1f} s")

    def waiting(self, health: StoreHealth) -> None:
        """At the command's end, while the last writes wait for the server."""
        self.see(health)
        if health.unreachable_since is not None and not self._told_waiting:
            self._told_waiting = True
            self.write(f"waiting for the tracking server to take the last {health.waiting} "
                       f"writes (at most --store-timeout; Ctrl-C keeps them in the journal "
                       f"for the next command)")


class Progress:
    """What a grid's progress shows: one line per finished cell (index of total, run name,
    result, its time, the elapsed and the remaining time), and the cells that train: on a
    terminal on a bar, else in a line once a cell has trained its second epoch, then at
    most one every HEARTBEAT_SECONDS. No line is longer than LINE_LIMIT characters.

    The time left comes from estimate.TimeLeft: the cost model's speed until the first
    epoch is measured, then the grid's own epochs and cells, spread over its trainers.

    Args:
        cells: The cells to train.
        echo: Where lines go when there is no bar.
        bar: Show the bar; default: when stderr is a terminal.
        store: The tracking server's health when the grid starts: its outages so far are
            not told again (StoreNotices).
        workers: The trainers that share the cells.
    """

    def __init__(self, cells: list[Cell], echo: Callable[[str], None], bar: bool | None = None,
                 store: StoreHealth | None = None, workers: int = 1):
        self.total = len(cells)
        self.done = 0
        self.echo = echo
        self.started = time.perf_counter()
        self._last_line = self.started
        self._told_training = False  # whether the cells in training were told yet
        self._started_at: dict[str, float] = {}
        self._epochs: dict[str, str] = {}  # the cells that train: their last epoch, as e/E
        self.time_left = TimeLeft(cells, workers, Speed.prior(workers, usable_cores()))
        # The bar's own estimate (cells per second) would say nothing until a whole cell
        # ended; the postfix carries this class's instead.
        self.bar = tqdm(total=self.total, unit="cell", dynamic_ncols=True, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]") \
            if (sys.stderr.isatty() if bar is None else bar) else None
        self.store = StoreNotices(self.write, store.outages if store is not None else 0)

    def write(self, line: str) -> None:
        """Print a line (above the bar, when there is one), cut to LINE_LIMIT."""
        line = shortened(line, LINE_LIMIT)
        self._last_line = time.perf_counter()
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)  # above the bar, which tqdm redraws
        else:
            self.echo(line)

    def cell_started(self, cell: Cell) -> None:
        """A cell began training."""
        now = time.perf_counter()
        self._started_at[cell.name] = now
        self.time_left.cell_started(cell.name, now)
        self._epochs[cell.name] = f"0/{cell.train.epochs}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{cell.name} epoch 0/{cell.train.epochs}")

    def epoch_done(self, cell: Cell, epoch: int, seconds: float | None = None) -> None:
        """A cell finished an epoch (from 1; 0: its initialized model was evaluated).

        Args:
            cell: The cell.
            epoch: The epoch.
            seconds: The epoch's time as its trainer measured it (None: unknown).
        """
        now = time.perf_counter()
        self.time_left.epoch_done(cell.name, epoch, seconds, now)
        self._epochs[cell.name] = f"{epoch}/{cell.train.epochs}"
        if self.bar is not None:
            self.bar.set_postfix_str(f"{cell.name} epoch {epoch}/{cell.train.epochs}, "
                                     f"{self._left(now)}")  # the bar shows the elapsed
        elif epoch >= 2 and (not self._told_training
                             or now - self._last_line >= HEARTBEAT_SECONDS):
            # From a cell's second epoch on: a first epoch alone (tracing the graph,
            # warming up) says little about the epochs after it.
            self._told_training = True
            self.write(self._training_line(now))

    def _training_line(self, now: float) -> str:
        """The cells that train and their epochs, as many as LINE_LIMIT holds."""
        tail = f"  ({self.done}/{self.total} done; {self._times(now)})"
        shown = ""
        for index, (name, epochs) in enumerate(self._epochs.items()):
            more = len(self._epochs) - index - 1
            part = f"{', ' if shown else ''}{name} epoch {epochs}"
            rest = f", +{more} more" if more else ""
            if len("  training ") + len(shown + part + rest) + len(tail) > LINE_LIMIT:
                shown += f"{', ' if shown else ''}+{more + 1} more"
                break
            shown += part
        return f"  training {shown}{tail}"

    def _times(self, now: float) -> str:
        """``elapsed H:MM:SS, left ~H:MM:SS`` (and the store's outage, if any)."""
        return f"elapsed {clock(now - self.started)}, {self._left(now)}"

    def _left(self, now: float) -> str:
        """``left ~H:MM:SS`` (and the store's outage, if any)."""
        note = f"; {self.store.note}" if self.store.note else ""
        return f"left ~{clock(self.time_left.remaining(now))}{note}"

    def cell_done(self, cell: Cell, outcome: str) -> None:
        """A cell ended (finished, diverged or failed), with its outcome in words."""
        self.done += 1
        now = time.perf_counter()
        self.time_left.cell_done(cell.name, now)
        self._epochs.pop(cell.name, None)
        took = now - self._started_at.pop(cell.name, now)
        head = f"[{self.done}/{self.total}] {cell.name}  "
        tail = f"  ({took:.1f} s; {self._times(now)})"
        self.write(head + shortened(outcome, LINE_LIMIT - len(head) - len(tail)) + tail)
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()

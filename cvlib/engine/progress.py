"""Progress of a grid: a tqdm bar on a terminal, plain lines otherwise, and the time left."""
from __future__ import annotations

import sys
import time
from typing import TYPE_CHECKING, Callable

from tqdm import tqdm

from cvlib.engine.scheduling import expected_cost
from cvlib.grids import Cell

if TYPE_CHECKING:
    from cvlib.tracking.journaled_writes import StoreHealth


def format_cell(cell: Cell) -> str:
    """A cell's varied settings, for progress lines and --dry-run."""
    settings = cell.settings()
    shown = [f"{key.split('.', 1)[1]}={settings[key]}" for key in cell.varied]
    return " ".join(shown + [f"seed={cell.seed}"])


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
    """One line per finished cell (index of total, settings, result, elapsed and
    remaining time), and the current cells' epochs: on a terminal on a bar, else one line
    per epoch.

    The time left is the elapsed time scaled by the work left, each cell's work being its
    expected cost (epochs x images x its pass's cost weight: scheduling.expected_cost),
    counted done epoch by epoch: an estimate after the first epoch, not after a whole cell.

    Args:
        cells: The cells to train.
        echo: Where lines go when there is no bar.
        bar: Show the bar; default: when stderr is a terminal.
        store: The tracking server's health when the grid starts: its outages so far are
            not told again (StoreNotices).
    """

    def __init__(self, cells: list[Cell], echo: Callable[[str], None], bar: bool | None = None,
                 store: StoreHealth | None = None):
        self.total = len(cells)
        self.done = 0
        self.echo = echo
        self.started = time.perf_counter()
        self._started_at: dict[str, float] = {}
        self._cost = {cell.name: expected_cost(cell) for cell in cells}
        self._done_cost: dict[str, float] = {}
        # The bar's own estimate (cells per second) would say nothing until a whole cell
        # ended; the postfix carries this class's instead.
        self.bar = tqdm(total=self.total, unit="cell", dynamic_ncols=True, file=sys.stderr,
                        bar_format="{l_bar}{bar}| {n_fmt}/{total_fmt} [{elapsed}{postfix}]") \
            if (sys.stderr.isatty() if bar is None else bar) else None
        self.store = StoreNotices(self.write, store.outages if store is not None else 0)

    def write(self, line: str) -> None:
        """Print a line (above the bar, when there is one)."""
        if self.bar is not None:
            self.bar.write(line, file=sys.stdout)  # above the bar, which tqdm redraws
        else:
            self.echo(line)

    def cell_started(self, cell: Cell) -> None:
        """A cell began training."""
        self._started_at[cell.name] = time.perf_counter()
        if self.bar is not None:
            self.bar.set_postfix_str(f"{cell.name} epoch 0/{cell.train.epochs}")

    def epoch_done(self, cell: Cell, epoch: int, val_accuracy: float | None = None) -> None:
        """A cell finished an epoch (from 1)."""
        epochs = max(cell.train.epochs, 1)
        self._done_cost[cell.name] = self._cost.get(cell.name, 0.0) * min(epoch / epochs, 1.0)
        text = f"{cell.name} epoch {epoch}/{cell.train.epochs}"
        left = f"left ~{clock(self.remaining())}" + (
            f"; {self.store.note}" if self.store.note else "")
        if self.bar is not None:
            self.bar.set_postfix_str(f"{text}, {left}")
            return
        accuracy = f" val_acc={val_accuracy:.3f}" if val_accuracy is not None else ""
        self.echo(f"  {text}{accuracy}  ({left})")

    def remaining(self) -> float:
        """Seconds left, from the work done so far (0 before any)."""
        done = sum(self._done_cost.values())
        left = sum(self._cost.values()) - done
        return (time.perf_counter() - self.started) * left / done if done > 0 else 0.0

    def cell_done(self, cell: Cell, outcome: str) -> None:
        """A cell ended (finished, diverged or failed), with its outcome in words."""
        self.done += 1
        self._done_cost[cell.name] = self._cost.get(cell.name, 0.0)
        now = time.perf_counter()
        took = now - self._started_at.pop(cell.name, now)
        self.write(f"[{self.done}/{self.total}] {cell.name}  {format_cell(cell)}  {outcome}  "
                   f"({took:.1f} s; elapsed {clock(now - self.started)}, "
                   f"left ~{clock(self.remaining())})")
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()

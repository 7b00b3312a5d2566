"""Progress of a grid: a tqdm bar on a terminal, plain lines otherwise."""
from __future__ import annotations

import sys
import time
from typing import Callable

from tqdm import tqdm

from cvlib.grids import Cell


def format_cell(cell: Cell) -> str:
    """A cell's varied settings, for progress lines and --dry-run."""
    settings = cell.settings()
    shown = [f"{key.split('.', 1)[1]}={settings[key]}" for key in cell.varied]
    return " ".join(shown + [f"seed={cell.seed}"])


def clock(seconds: float) -> str:
    """Seconds as H:MM:SS."""
    seconds = int(round(seconds))
    return f"{seconds // 3600}:{seconds % 3600 // 60:02d}:{seconds % 60:02d}"


class Progress:
    """One line per finished cell (index of total, settings, result, elapsed and
    remaining time); on a terminal also a bar with the current cell's epoch.

    Args:
        total: Cells to train.
        echo: Where lines go when there is no bar.
        bar: Show the bar; default: when stderr is a terminal.
    """

    def __init__(self, total: int, echo: Callable[[str], None], bar: bool | None = None):
        self.total = total
        self.done = 0
        self.echo = echo
        self.started = time.perf_counter()
        self._started_at: dict[str, float] = {}
        self.bar = tqdm(total=total, unit="cell", dynamic_ncols=True, file=sys.stderr) \
            if (sys.stderr.isatty() if bar is None else bar) else None

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

    def epoch_done(self, cell: Cell, epoch: int) -> None:
        """A cell finished an epoch."""
        if self.bar is not None:
            self.bar.set_postfix_str(f"{cell.name} epoch {epoch}/{cell.train.epochs}")

    def cell_done(self, cell: Cell, outcome: str) -> None:
        """A cell ended (finished, diverged or failed), with its outcome in words."""
        self.done += 1
        now = time.perf_counter()
        elapsed = now - self.started
        remaining = elapsed / self.done * (self.total - self.done)
        took = now - self._started_at.pop(cell.name, now)
        self.write(f"[{self.done}/{self.total}] {cell.name}  {format_cell(cell)}  {outcome}  "
                    f"({took:.1f} s; elapsed {clock(elapsed)}, left ~{clock(remaining)})")
        if self.bar is not None:
            self.bar.update(1)

    def close(self) -> None:
        """Remove the bar."""
        if self.bar is not None:
            self.bar.close()

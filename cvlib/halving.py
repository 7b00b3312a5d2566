"""Successive halving (Jamieson and Talwalkar 2016) over a grid's cells.

Every cell trains for ``min_epochs``; the best ``1/reduction`` by validation
accuracy (diverged and failed cells first out) go on to ``reduction`` times the
epochs, and so on up to ``max_epochs``. A cell keeps one MLflow run throughout,
tagged with the rung it reached, and continues from its saved weights and optimizer
state on the batches an uninterrupted run would see next (each epoch's order depends
on the seed and the epoch alone: ``feeds.epoch_batches``). A cell of the last rung
therefore ends with exactly ``max_epochs`` epochs, trained as a plain grid's cell with
that many epochs is, to float precision.
"""
from __future__ import annotations

import math
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

from cvlib.config import Cell, SearchConfig
from cvlib.planning import Stage

RUNG_TAG = "cvlib.rung"
SEARCH_TAG = "cvlib.search"


def survivors(results: dict[int, dict[str, Any]], reduction: int) -> list[int]:
    """The keys of the cells that go on: the best ``ceil(n / reduction)`` by
    val_accuracy; a diverged cell ranks below every other.

    Args:
        results: Each surviving cell's stage summary (``outcome``, ``val_accuracy``).
        reduction: The search's reduction factor.

    Returns:
        The keys, best first.
    """
    def rank(key: int) -> tuple[bool, float]:
        result = results[key]
        accuracy = result.get("val_accuracy")
        return (result["outcome"] != "diverged", -math.inf if accuracy is None else accuracy)

    ranked = sorted(results, key=rank, reverse=True)
    keep = [key for key in ranked[:math.ceil(len(ranked) / reduction)]
            if results[key]["outcome"] != "diverged"]
    return keep


def successive_halving(cells: list[Cell], search: SearchConfig,
                       execute: Callable[[list[tuple[int, Cell, Stage]]], None],
                       recorder, echo: Callable[[str], None]) -> None:
    """Run the rungs.

    Args:
        cells: The cells, keyed by their index.
        search: The search settings (rung epochs, reduction).
        execute: Trains (key, cell, stage) tasks and reports to the recorder.
        recorder: The GridRecorder, holding finished stages' results until closed.
        echo: Receives one line per rung.
    """
    rungs = search.rungs()
    folder = Path(tempfile.mkdtemp(prefix="cvlib-halving-"))
    alive, start = list(range(len(cells))), 0
    try:
        for index, end in enumerate(rungs):
            recorder.held.clear()
            execute([(key, cells[key], Stage(start, end, str(folder / f"{key}.keras")))
                     for key in alive])
            results = {key: recorder.held[key] for key in alive if key in recorder.held}
            keep = survivors(results, search.reduction) if index < len(rungs) - 1 else []
            for key in results:
                if key not in keep:
                    recorder.close(key, results[key], {RUNG_TAG: index, SEARCH_TAG: "halving"})
            echo(f"rung {index + 1}/{len(rungs)}: {len(results)} cells trained to epoch {end}"
                 + (f"; the best {len(keep)} go on" if keep else ""))
            alive, start = keep, end
            if not alive:
                break
    finally:
        shutil.rmtree(folder, ignore_errors=True)

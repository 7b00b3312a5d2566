"""What happens to a cell whose trainer is lost with it (a worker process killed or out of
memory, a Ray node gone), whatever the backend: the pool's loop asks this policy."""
from __future__ import annotations

from dataclasses import dataclass

from cvlib.engine.epoch_checkpoints import continued_stage
from cvlib.engine.events import CellFailed, CellRetried
from cvlib.engine.trials import CellTrial

# Times a cell lost with its trainer trains again (--cell-retries).
DEFAULT_CELL_RETRIES = 2


@dataclass(frozen=True)
class RetryPolicy:
    """A lost cell continues from its epoch checkpoint in its run, or, without one,
    trains again from its first epoch in a new run, at most ``retries`` times; then it
    fails.

    Args:
        retries: Times a cell may be lost and trained again.
    """

    retries: int = DEFAULT_CELL_RETRIES

    def after_loss(self, trial: CellTrial, reason: str) -> CellRetried | CellFailed:
        """Decide a lost cell's fate, and set the trial up for it.

        Args:
            trial: The cell, whose trainer had taken its task.
            reason: Why the trainer was lost, in words.

        Returns:
            CellRetried (the trial waits again, from its checkpoint or its first epoch)
            or, past the retries, CellFailed.
        """
        trial.losses += 1
        if trial.losses > self.retries:
            return CellFailed(trial.key, reason if trial.losses == 1
                              else f"{reason}, lost {trial.losses} times")
        retry = f"retry {trial.losses} of {self.retries}"
        stage = continued_stage(trial.cell, trial.task.stage)
        if stage is not None:
            trial.resume(stage)
            return CellRetried(trial.key, f"{reason}; continuing it from its checkpoint after "
                                          f"epoch {stage.start_epoch} ({retry})", continued=True)
        trial.restart()
        return CellRetried(trial.key, f"{reason}; training it again from its first epoch "
                                      f"({retry})")

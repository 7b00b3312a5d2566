"""Which process owns a run, recorded so that a later command can tell whether it lives.

A pid names one process only within one pid namespace of one boot of one kernel, and only
until that process ends and the number goes to another. So an owner is the host name, the
kernel's boot id, the pid namespace, the pid and the process's start time (clock ticks
since boot, from ``/proc``). A later command checks the process only where the boot id and
the pid namespace are its own, and finds it alive only when that pid's process started at
the recorded tick. Anywhere else (another machine, another container, a run written
without these tags, a system without ``/proc``) the owner cannot be checked: the run's
heartbeat decides (engine.resume). MLflow-free.
"""
from __future__ import annotations

import os
import socket
from dataclasses import dataclass
from pathlib import Path

from cvlib.tracking import schema

PROC = Path("/proc")
# The kernel's id of the current boot: shared by every container on the machine.
BOOT_ID_FILE = PROC / "sys/kernel/random/boot_id"
# Field 22 of /proc/PID/stat, counted after the ')' that ends the command's name (field 2):
# the process's start, in clock ticks since boot. Field 3 is its state (Z: a zombie).
_STATE_FIELD, _START_FIELD = 0, 19


@dataclass(frozen=True)
class Owner:
    """The process that owns a run, as its tags record it (None: not recorded)."""

    host: str | None = None
    pid: int | None = None
    boot_id: str | None = None
    pid_namespace: str | None = None
    # The process's start, in clock ticks since the boot.
    start_ticks: int | None = None

    def tags(self) -> dict[str, str]:
        """The run tags that record this owner (those known)."""
        values = {schema.HOST_TAG: self.host, schema.PID_TAG: self.pid,
                  schema.BOOT_ID_TAG: self.boot_id,
                  schema.PID_NAMESPACE_TAG: self.pid_namespace,
                  schema.PROCESS_START_TAG: self.start_ticks}
        return {key: str(value) for key, value in values.items() if value is not None}

    @classmethod
    def from_tags(cls, tags: dict[str, str]) -> Owner:
        """The owner a run's tags record; what they lack (a run written before some of
        these tags) is None."""
        return cls(host=tags.get(schema.HOST_TAG), pid=_number(tags.get(schema.PID_TAG)),
                   boot_id=tags.get(schema.BOOT_ID_TAG) or None,
                   pid_namespace=tags.get(schema.PID_NAMESPACE_TAG) or None,
                   start_ticks=_number(tags.get(schema.PROCESS_START_TAG)))


def _number(text: str | None) -> int | None:
    return int(text) if text and text.isdigit() else None


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _stat_fields(pid: int) -> list[str] | None:
    """The fields of /proc/PID/stat after the process's name (which may hold spaces and
    parentheses), or None when there is no such process here."""
    text = _read(PROC / str(pid) / "stat")
    if text is None or ")" not in text:
        return None
    return text[text.rindex(")") + 1:].split()


def this_process() -> Owner:
    """This process, as the owner of the runs it creates.

    Its start tick is left out when ``/proc`` belongs to another pid namespace than the
    process (its ``self`` is another pid): such a pid could not be checked later.
    """
    pid = os.getpid()
    try:
        namespace = os.readlink(PROC / "self/ns/pid")
    except OSError:
        namespace = None
    own_proc = Path(os.path.realpath(PROC / "self")).name == str(pid)
    fields = _stat_fields(pid) if own_proc else None
    return Owner(host=socket.gethostname(), pid=pid, boot_id=_read(BOOT_ID_FILE),
                 pid_namespace=namespace,
                 start_ticks=int(fields[_START_FIELD]) if fields else None)


def owner_alive(owner: Owner, here: Owner | None = None) -> bool | None:
    """Whether a run's owner process still runs, when this process can tell.

    Args:
        owner: The owner a run's tags record.
        here: This process (default: :func:`this_process`).

    Returns:
        True or False where the owner's pid means what it meant to the owner (the same
        boot and pid namespace, both recorded); None where it cannot be told: the run's
        heartbeat must decide.
    """
    here = here or this_process()
    if None in (owner.pid, owner.start_ticks, owner.boot_id, owner.pid_namespace,
                here.start_ticks) or (owner.boot_id, owner.pid_namespace) != (
                    here.boot_id, here.pid_namespace):
        return None
    fields = _stat_fields(owner.pid)
    if fields is None:  # no such process, or hidden from this user (procfs's hidepid)
        return _hidden(owner.pid)
    return fields[_STATE_FIELD] != "Z" and int(fields[_START_FIELD]) == owner.start_ticks


def _hidden(pid: int) -> bool | None:
    """False when no process has the pid; None when one does that /proc does not show."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except OSError:  # another user's process
        pass
    return None

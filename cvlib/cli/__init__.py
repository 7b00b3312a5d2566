"""The ``cvlib`` command: thin argument parsing over the library, one module per group of
subcommands (:mod:`~cvlib.cli.grid_commands`: run, table, report; :mod:`~cvlib.cli.register`:
register; :mod:`~cvlib.cli.ui`: ui;
:mod:`~cvlib.cli.study_commands`: sanity, lr-search, claims) and the options they share
(:mod:`~cvlib.cli.options`).

The only package that imports argparse, and the entry point that sets up the process
(:func:`cvlib.environment.configure_process`) before anything else runs.
"""
from __future__ import annotations

import argparse
import gc
import sys

from cvlib import __version__
from cvlib.cli.console import add_verbose_option, held_back, held_back_note, log_file
from cvlib.cli.grid_commands import GRID_COMMANDS, add_grid_parsers
from cvlib.cli.options import use_store
from cvlib.cli.register import add_register_parser, command_register
from cvlib.cli.server import add_server_parser, command_server
from cvlib.cli.study_commands import STUDY_COMMANDS, add_study_parsers
from cvlib.cli.ui import add_ui_parser, command_ui
from cvlib.environment import configure_process
from cvlib.errors import CvlibError
from cvlib.tracking.failures import store_failures

COMMANDS = {**GRID_COMMANDS, "register": command_register, "ui": command_ui,
            "server": command_server, **STUDY_COMMANDS}


class OneLineParser(argparse.ArgumentParser):
    """argparse, whose refusals are one line on stderr and exit status 2, as every other
    refusal of cvlib's: the usage it would print first is what --help shows."""

    def error(self, message: str):
        """Refuse the command line: one line naming the problem, then exit 2."""
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of every subcommand (a subcommand's parser is of the same class:
    argparse's add_subparsers makes its parsers of the class of the parser that adds it)."""
    parser = OneLineParser(
        prog="cvlib",
        description="Train grids of Keras models on CIFAR-10 (activation x initializer x "
                    "batch-norm placement x ...) and compare them in MLflow.",
        epilog="Start with: cvlib run experiments/smoke.yaml && cvlib table && cvlib report")
    parser.add_argument("--version", action="version", version=f"cvlib {__version__}")
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    add_grid_parsers(commands)
    add_register_parser(commands)
    add_ui_parser(commands)
    add_server_parser(commands)
    add_study_parsers(commands)
    for command in commands.choices.values():
        add_verbose_option(command)
    return parser


def main(argv: list[str] | None = None) -> int:
    """Entry point of the ``cvlib`` console command.

    Args:
        argv: The arguments (default: the process's).

    Returns:
        The exit status: 0 ok, 1 some cells failed, 2 bad input, 3 the tracking server
        stayed away (the results wait in the local journal), 128 + N signal N.
    """
    configure_process()
    args = build_parser().parse_args(argv)
    args.log_file = None if args.verbose else log_file(args.command)
    failed = True  # also when the command raises
    try:
        with held_back(args.log_file):
            status = _run(args)
        # Bad input (2) and a stop by a signal (128 + N) have nothing in the log to read.
        failed = status not in (0, CvlibError.exit_status) and status < 128
        return status
    finally:
        note = held_back_note(args.log_file) if failed else None
        if note:
            print(note, file=sys.stderr)


def _run(args) -> int:
    """Run the parsed command; its exit status."""
    try:
        if hasattr(args, "tracking_uri"):  # every command that has a store
            use_store(args)
            with store_failures(args.tracking_uri):
                return COMMANDS[args.command](args)
        return COMMANDS[args.command](args)
    except CvlibError as error:
        print(f"cvlib: error: {error}", file=sys.stderr)
        return error.exit_status


def console_main() -> None:
    """The ``cvlib`` console command (and ``python -m cvlib``): :func:`main`, then exit.

    Freezing the heap first skips the interpreter's final garbage collection over
    MLflow's, SQLAlchemy's and pandas's objects (docs/design.md gives the time it saves);
    atexit handlers and the flushing of output still run.
    """
    status = main()
    gc.freeze()
    sys.exit(status)

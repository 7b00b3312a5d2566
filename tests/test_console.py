"""What commands show: cvlib's own lines. What libraries and servers print (TensorFlow's C++
log from every process that trains, MLflow's server's warnings, banner and access log) is
held back in the command's log file, which a failure names and --verbose shows instead.
(`cvlib ui`'s output: tests/test_ui.py.)"""
import os
import re
import socket
import subprocess
import sys
import urllib.request
from pathlib import Path

import pytest
from conftest import REPO, TINY_GRID, free_port, run_cvlib, start_server, stop_server

from cvlib import cli

# The tiny grid with a leaky_relu cell, whose training makes TensorFlow 2.21's graph
# optimizer log "E0000 ... meta_optimizer.cc:967] remapper failed" in the process that
# trains it.
LEAKY_GRID = (TINY_GRID.replace("name: tiny", "name: leaky")
              .replace("model.activation: [relu, tanh]", "model.activation: [leaky_relu, relu]")
              .replace("  model.bn: [none, before]\n", "").replace("epochs: 2", "epochs: 1"))
# A line of TensorFlow's C++ log (absl's format: severity, date, time, thread, file:line]).
TENSORFLOW_LINE = re.compile(r"^[IWEF]\d{4} [\d:.]+ +\d+ [\w.]+:\d+\]", re.MULTILINE)
# What MLflow's server prints that no cvlib user can act on.
SERVER_NOISE = ("StarletteDeprecationWarning", "Security middleware",
                "Registry store URI not provided", '"GET /health HTTP/1.1" 200')


def _logs(cache: Path, command: str) -> str:
    """The held-back output of every `command` run with XDG_CACHE_HOME=cache."""
    return "".join(path.read_text() for path in (cache / "cvlib" / "logs").glob(f"{command}-*"))


def test_a_grid_holds_back_tensorflows_log_and_verbose_shows_it(tmp_path, cifar_dir):
    """The real `cvlib run` of a grid with a leaky_relu cell prints no TensorFlow log line
    nor any warning, in worker processes; the command's log holds them. With --verbose, in
    this process (--workers 1), they are shown, and no log is kept."""
    grid = tmp_path / "leaky.yaml"
    grid.write_text(LEAKY_GRID)
    cache = tmp_path / "cache"
    quiet = run_cvlib("run", str(grid), "--tracking-uri", f"sqlite:///{tmp_path / 'a.db'}",
                      "--data-dir", str(cifar_dir), "--workers", "2",
                      env_extra={"XDG_CACHE_HOME": str(cache)})
    assert quiet.returncode == 0, quiet.stderr[-3000:]
    output = quiet.stdout + quiet.stderr
    assert "2 cells finished" in output
    assert not TENSORFLOW_LINE.search(output), output
    assert "warning" not in output.lower(), output
    assert TENSORFLOW_LINE.search(_logs(cache, "run")), _logs(cache, "run")

    verbose = run_cvlib("run", str(grid), "--tracking-uri", f"sqlite:///{tmp_path / 'b.db'}",
                        "--data-dir", str(cifar_dir), "--workers", "1", "--verbose",
                        env_extra={"XDG_CACHE_HOME": str(cache / "verbose")})
    assert verbose.returncode == 0, verbose.stderr[-3000:]
    assert TENSORFLOW_LINE.search(verbose.stderr), verbose.stderr
    assert not (cache / "verbose" / "cvlib").exists()


def test_server_prints_its_address_only_and_keeps_the_rest_in_its_log(tmp_path):
    """`cvlib server` prints one line, once it listens; MLflow's warnings, banner and a
    line per request go to its log."""
    cache = tmp_path / "cache"
    server, url = start_server(f"sqlite:///{tmp_path / 'runs.db'}", tmp_path,
                               env={"XDG_CACHE_HOME": str(cache)})
    try:
        urllib.request.urlopen(f"{url}/health", timeout=30).close()
    finally:
        stop_server(server)
    output = (tmp_path / "server.log").read_text()
    assert output.splitlines() == [
        f"MLflow tracking server on {url} for sqlite:///{tmp_path / 'runs.db'}; point cvlib "
        f"at it with --tracking-uri {url}. Stop it with Ctrl-C."], output
    for line in SERVER_NOISE:
        assert line in _logs(cache, "server"), (line, _logs(cache, "server"))


def test_a_failure_names_the_log_that_says_why(tmp_path):
    """`cvlib server` on a port another program holds: MLflow's server fails; the command
    exits 1 saying the port is taken, and names its log, which holds MLflow's own error."""
    cache = tmp_path / "cache"
    port = free_port()
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", port))
        holder.listen()
        result = subprocess.run(
            [sys.executable, "-m", "cvlib", "server", "--port", str(port),
             "--backend-store-uri", f"sqlite:///{tmp_path / 'runs.db'}",
             "--artifacts-destination", str(tmp_path / "artifacts")],
            capture_output=True, text=True, timeout=300, cwd=REPO,
            env={**os.environ, "XDG_CACHE_HOME": str(cache)})
    assert result.returncode == 1, result.stdout + result.stderr
    assert result.stdout == ""  # no address announced: it never listened
    error, note = result.stderr.strip().splitlines()
    assert error.startswith("cvlib: error: MLflow's server ended by itself") and \
        f"port {port} of 127.0.0.1 is taken (another program listens there)" in error, error
    log = Path(re.search(r" in (\S+\.log) ", note).group(1))
    assert log.parent == cache / "cvlib" / "logs" and log.name.startswith("server-"), note
    assert "--verbose" in note
    assert "address already in use" in log.read_text().lower()


def test_every_command_takes_verbose(capsys):
    for name in cli.COMMANDS:
        with pytest.raises(SystemExit):
            cli.build_parser().parse_args([name, "--help"])
        assert "--verbose" in capsys.readouterr().out, name

"""Bad input, in one place: every command refuses it with one line on stderr and status 2,
without a traceback, before anything is written. In-process through ``cli.main``; one
subprocess test checks the real command's exit status."""
import contextlib
import os
import textwrap

import pytest
from conftest import (
    ADMIN_PASSWORD,
    create_user,
    free_port,
    run_cvlib,
    service_missing,
    team_services,
)

from cvlib import cli

GRID = textwrap.dedent("""\
    # Bad-input test grid: one tiny cell.
    name: bad
    data: {train_size: 200, val_size: 100, test_size: 100}
    model: {widths: [4], dense_units: 8}
    train: {epochs: 1}
    """)

BAD_GRIDS = {
    "unparsable": ("name: x\nmodel: {activation: [relu\n", "is not valid YAML at line"),
    "unknown section": ("name: x\nmodels: {}\n", "unknown section models; valid: name, data"),
    "unknown key": ("name: x\ntrain: {epoch: 3}\n", "unknown key train.epoch; valid keys"),
    "activation": ("model: {activation: swish2}\n", "unknown model.activation 'swish2'; valid:"),
    "initializer": ("model: {initializer: ones}\n", "unknown model.initializer 'ones'; valid:"),
    "logits initializer": ("model: {logits_initializer: ones}\n",
                           "unknown model.logits_initializer 'ones'; valid: small_gaussian"),
    "bn": ("model: {bn: inside}\n", "unknown model.bn 'inside'; valid: none, before, after"),
    "arch": ("model: {arch: vit}\n", "unknown model.arch 'vit'; valid: cnn, mlp"),
    "optimizer": ("train: {optimizer: lion}\n", "unknown train.optimizer 'lion'; valid: sgd"),
    "preprocess": ("data: {preprocess: zca}\n", "unknown data.preprocess 'zca'; valid: none"),
    "negative size": ("data: {val_size: -5}\n", "data.val_size must be at least 1"),
    "negative epochs": ("train: {epochs: -1}\n", "train.epochs must be at least 0"),
    "zero batch": ("train: {batch_size: 0}\n", "train.batch_size must be at least 1"),
    "zero data": ("data: {train_size: 0}\n", "data.train_size must be at least 1"),
    "zero lr": ("train: {learning_rate: 0}\n", "train.learning_rate must be above 0"),
    "negative lr": ("train: {learning_rate: -0.1}\n", "train.learning_rate must be above 0"),
    "empty axis": ("grid: {model.activation: []}\n", "grid axis model.activation must be a "
                                                     "non-empty list"),
    "too many images": ("data: {train_size: 46000, val_size: 5000}\n",
                        "data.train_size + data.val_size = 51000 is above the 50,000"),
    "save model": ("train: {save_model: best}\n", "unknown train.save_model 'best'; valid: "
                                                   "final, none"),
    "unknown search": ("search: {strategy: bayes}\n", "unknown search.strategy 'bayes'; valid: "
                                                   "grid, halving, random, tpe"),
    "confirm key": ("search: {confirm: {best: 3}}\n", "unknown key search.confirm.best; "
                                                     "valid keys of 'search.confirm': top, seeds"),
    "confirm halving": ("search: {strategy: halving, confirm: {top: 2}}\n",
                        "search.confirm needs search.strategy grid, not halving"),
    "confirm seeds": ("seeds: [0, 1]\nsearch: {confirm: {seeds: 2}}\n",
                      "search.confirm.seeds (2) must be above the grid's 2 seeds"),
    "axis value": ("grid: {model.activation: [relu, nope]}\n",
                   "unknown model.activation 'nope'; valid: relu, leaky_relu"),
    "axis key": ("grid: {modle.bn: [none]}\n", "unknown key 'modle.bn'; valid: data.<key>"),
    "no seeds": ("seeds: []\n", "seeds must be a non-empty list"),
    "width type": ("model: {widths: [8, a]}\n", "model.widths must be an integer"),
    "section type": ("model: [relu]\n", "'model' must be a mapping of keys to values"),
}


def _grid(folder, text=GRID):
    path = folder / "grid.yaml"
    path.write_text(text)
    return str(path)


def _refused(capsys, tmp_path, message, *args, store=True):
    """Run ``cvlib ARGS`` in this process; check the one-line refusal and the untouched
    store."""
    extra = ["--tracking-uri", f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"] if store else []
    status = cli.main([*args, *extra])
    err = capsys.readouterr().err
    assert status == 2, err
    assert message in err
    assert "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("case", sorted(BAD_GRIDS))
def test_a_bad_grid_file(capsys, tmp_path, case):
    text, message = BAD_GRIDS[case]
    _refused(capsys, tmp_path, message, "run", _grid(tmp_path, text))


@pytest.mark.parametrize("args, message", [
    (["run", "missing.yaml"], "grid file not found: missing.yaml"),
    (["run", "GRID", "--set", "model.activation=swishy"],
     "unknown model.activation 'swishy'; valid: relu"),
    (["run", "GRID", "--set", "train.epochs"], "--set 'train.epochs' has no '='"),
    (["run", "GRID", "--set", "train.learning_rate=-1"], "must be above 0"),
    (["run", "GRID", "--set", "modle.bn=none"], "unknown key 'modle.bn'"),
    (["sanity"], "give a grid file or the cell's settings with --cell KEY=VALUE"),
    (["lr-search", "GRID", "--lr-range", "1", "0.1"], "0 < LOW < HIGH"),
    (["run", "GRID", "--cpus-per-cell", "2"],
     "--cpus-per-cell applies only with --ray or --deterministic"),
    (["run", "GRID", "--deterministic", "--cpus-per-cell", "1", "--gpus-per-cell", "1"],
     "--gpus-per-cell applies only with --ray"),
    (["claims", "--cpus-per-cell", "1", "--gpus-per-cell", "1"],
     "--cpus-per-cell and --gpus-per-cell apply only with --ray"),
    (["run", "GRID", "--ray", "127.0.0.1:1"], "cannot reach the Ray cluster at 127.0.0.1:1"),
    (["sanity", "GRID", "--ray", "ray://alice:secret@127.0.0.1:1"],
     "cannot reach the Ray cluster at ray://127.0.0.1:1"),
])
def test_bad_arguments(capsys, tmp_path, args, message):
    grid = _grid(tmp_path)
    _refused(capsys, tmp_path, message, *[grid if arg == "GRID" else arg for arg in args])


@pytest.mark.parametrize("args, message", [
    (["--host", "0.0.0.0"], "refusing to listen on 0.0.0.0 without --auth"),
    (["--host", "lab-server"], "refusing to listen on lab-server without --auth"),
    (["--auth"], "--auth needs a secret key in $MLFLOW_FLASK_SERVER_SECRET_KEY"),
])
def test_a_server_that_would_expose_the_runs(capsys, tmp_path, monkeypatch, args, message):
    monkeypatch.delenv("MLFLOW_FLASK_SERVER_SECRET_KEY", raising=False)
    monkeypatch.chdir(tmp_path)
    _refused(capsys, tmp_path, message, "server", *args, store=False)
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("flag", ["--backend-store-uri", "--auth-db-uri"])
def test_a_server_refuses_a_password_on_its_command_line(capsys, tmp_path, monkeypatch, flag):
    """ps shows a command line to everyone on the machine: a database password belongs in
    ~/.pgpass or $MLFLOW_BACKEND_STORE_URI, and is not repeated in the refusal."""
    monkeypatch.chdir(tmp_path)
    _refused(capsys, tmp_path, f"{flag} carries a password, which ps shows", "server",
             flag, "postgresql://cvlib:Db-Secret-42@db.lab.example/mlflow", store=False)
    assert not (tmp_path / "mlruns").exists()


@pytest.mark.parametrize("url", ["ftp://mlflow.lab.example", "mlflow.lab.example",
                                 "https://ada:pw@mlflow.lab.example"])
def test_a_server_refuses_a_public_url_that_is_not_one(capsys, tmp_path, monkeypatch, url):
    monkeypatch.chdir(tmp_path)
    _refused(capsys, tmp_path, "--public-url", "server", "--public-url", url, store=False)
    assert "pw" not in capsys.readouterr().err


def test_a_first_login_server_needs_the_admin_password_from_the_environment(
        capsys, tmp_path, monkeypatch):
    monkeypatch.setenv("MLFLOW_FLASK_SERVER_SECRET_KEY", "key")
    monkeypatch.delenv("MLFLOW_AUTH_ADMIN_PASSWORD", raising=False)
    _refused(capsys, tmp_path, "put its password in $MLFLOW_AUTH_ADMIN_PASSWORD", "server",
             "--auth", "--auth-db-uri", f"sqlite:///{tmp_path / 'users.db'}", store=False)


def test_an_unreachable_tracking_server(capsys, tmp_path, cifar_dir):
    status = cli.main(["run", _grid(tmp_path), "--workers", "1", "--data-dir", str(cifar_dir),
                       "--tracking-uri", "http://127.0.0.1:9"])
    err = capsys.readouterr().err
    assert status == 2
    assert "cannot reach the tracking server http://127.0.0.1:9" in err
    assert len(err.strip().splitlines()) == 1, err


def test_an_unreachable_tracking_server_named_without_its_login(capsys, tmp_path, cifar_dir,
                                                                monkeypatch):
    for name in ("MLFLOW_TRACKING_USERNAME", "MLFLOW_TRACKING_PASSWORD"):
        monkeypatch.delenv(name, raising=False)  # restored after the command sets them
    status = cli.main(["run", _grid(tmp_path), "--workers", "1", "--data-dir", str(cifar_dir),
                       "--tracking-uri", "http://ada:Pass%40word-9@127.0.0.1:9"])
    out, err = capsys.readouterr()
    assert status == 2
    assert "cannot reach the tracking server http://127.0.0.1:9" in err
    assert len(err.strip().splitlines()) == 1, err
    assert "Pass" not in out + err


def test_a_data_folder_without_cifar(capsys, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    _refused(capsys, tmp_path, f"no CIFAR-10 in {empty}", "run", _grid(tmp_path),
             "--workers", "1", "--data-dir", str(empty))


def _copy_of_cifar(cifar_dir, tmp_path):
    folder = tmp_path / "data" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for path in (cifar_dir / "cifar-10-batches-py").iterdir():
        os.symlink(path, folder / path.name)
    return folder


def test_a_truncated_batch_file_is_named(capsys, tmp_path, cifar_dir):
    folder = _copy_of_cifar(cifar_dir, tmp_path)
    payload = (folder / "data_batch_2").read_bytes()
    (folder / "data_batch_2").unlink()
    (folder / "data_batch_2").write_bytes(payload[:1000])
    _refused(capsys, tmp_path, "data_batch_2 is truncated or corrupt", "run", _grid(tmp_path),
             "--workers", "1", "--data-dir", str(folder.parent))


def test_a_pickle_that_runs_code_is_refused_and_runs_nothing(capsys, tmp_path, cifar_dir):
    folder = _copy_of_cifar(cifar_dir, tmp_path)
    marker = tmp_path / "code-ran"
    (folder / "test_batch").unlink()
    # protocol-0 pickle of os.system("touch marker"), as a doctored download could hold
    (folder / "test_batch").write_bytes(f"cposix\nsystem\n(Vtouch {marker}\ntR.".encode())
    _refused(capsys, tmp_path, "test_batch: refused to load global posix.system", "run",
             _grid(tmp_path), "--workers", "1", "--data-dir", str(folder.parent))
    assert not marker.exists()


@pytest.mark.parametrize("args, message", [
    (["table", "--experiment", "nope"], "no experiment named 'nope'"),
    (["table", "--columns", "nope"], "no metric nope in 'tiny'"),
    (["report", "--experiment", "nope"], "no experiment named 'nope'"),
    (["report", "--cell", "nope-s0"],
     "no cell run named 'nope-s0'; there are: relu-he-before-s0, relu-he-none-s0"),
])
def test_reading_commands_name_what_is_not_there(capsys, tiny_store, tmp_path, args, message):
    uri, _, _ = tiny_store
    out = tmp_path / "out.html"
    status = cli.main([*args, "--tracking-uri", uri, "--out", str(out)])
    err = capsys.readouterr().err
    assert status == 2, err
    assert message in err and len(err.strip().splitlines()) == 1, err
    assert not out.exists()


@pytest.mark.parametrize("args, message", [
    (["--experiment", "nope", "--name", "m"], "no experiment named 'nope'"),
    (["--name", "m"], "cvlib register needs --experiment NAME"),
    (["--experiment", "tiny", "--name", " "], "--name must not be empty"),
    (["--experiment", "tiny", "--metric", "nope", "--name", "m"], "no metric 'nope' in 'tiny'"),
    (["--experiment", "tiny"], "the following arguments are required: --name"),
])
def test_register_names_what_is_not_there(capsys, tiny_store, args, message):
    uri, _, _ = tiny_store
    with pytest.raises(SystemExit) if "required" in message else contextlib.nullcontext():
        assert cli.main(["register", *args, "--tracking-uri", uri]) == 2
    err = capsys.readouterr().err
    assert message in err and len(err.strip().splitlines()) == 1, err


@pytest.mark.parametrize("command", [["table"], ["report"], ["ui"], ["table", "--experiment",
                                                                        "smoke"],
                                     ["register", "--experiment", "smoke", "--name", "m"]])
def test_a_reading_command_on_an_empty_folder_creates_no_store(capsys, tmp_path, command):
    """`cvlib table` (report, ui) before any `cvlib run`: it says there are no runs yet and
    how to make some, and leaves no store behind."""
    uri = f"sqlite:///{tmp_path / 'mlruns' / 'mlflow.db'}"
    status = cli.main([*command, "--tracking-uri", uri])
    err = capsys.readouterr().err
    assert status == 2
    assert "no runs yet" in err and f"cvlib run experiments/smoke.yaml --tracking-uri {uri}" in err
    assert len(err.strip().splitlines()) == 1, err
    assert not (tmp_path / "mlruns").exists()


def test_the_real_command_exits_2(tmp_path):
    """The console command turns a refusal into exit status 2 (the others run in-process)."""
    result = run_cvlib("run", str(tmp_path / "missing.yaml"), "--tracking-uri",
                       f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}")
    assert result.returncode == 2
    assert result.stderr.strip() == f"cvlib: error: grid file not found: {tmp_path}/missing.yaml"
    assert not (tmp_path / "store").exists()


@pytest.mark.parametrize("command, value, message", [
    ("run", "-1", "argument --cell-retries: must be at least 0, got -1"),
    ("sanity", "two", "argument --cell-retries: invalid non_negative_int value: 'two'"),
])
def test_cell_retries_must_be_a_whole_number_of_at_least_zero(capsys, tmp_path, command, value,
                                                               message):
    """Local workers and Ray alike take --cell-retries; a bad value is one error line."""
    with pytest.raises(SystemExit) as stopped:
        cli.main([command, _grid(tmp_path), "--cell-retries", value])
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert message in line


def test_a_store_timeout_must_be_above_zero(capsys, tmp_path):
    with pytest.raises(SystemExit) as stopped:
        cli.main(["run", _grid(tmp_path), "--store-timeout", "0"])
    assert stopped.value.code == 2
    assert "--store-timeout: must be above 0, got 0" in capsys.readouterr().err


def _one_line_refusal(result, message: str) -> str:
    """The real command refused with status 2 and exactly one line on stderr, holding
    message; returns the line."""
    lines = result.stderr.splitlines()
    assert result.returncode == 2, result.stderr[-3000:]
    assert len(lines) == 1, result.stderr[-3000:]
    assert message in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize("command", ["table", "report"])
def test_reading_commands_refused_by_a_server_say_so_in_one_line(login_server, tmp_path,
                                                                 command):
    for login in ({"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": "wrong"},
                  {"MLFLOW_TRACKING_USERNAME": "", "MLFLOW_TRACKING_PASSWORD": ""}):
        result = run_cvlib(command, "--tracking-uri", login_server,
                           "--out", str(tmp_path / "out.html"), env_extra=login)
        _one_line_refusal(result, f"the tracking server {login_server} refused the login")
        assert "wrong" not in result.stdout + result.stderr
    assert not (tmp_path / "out.html").exists()


@pytest.mark.parametrize("command", ["table", "report"])
def test_reading_commands_on_an_unreachable_server_say_so_in_one_line(tmp_path, command):
    nobody = f"http://127.0.0.1:{free_port()}"
    result = run_cvlib(command, "--tracking-uri", nobody, "--experiment", "smoke")
    _one_line_refusal(result, f"cannot reach the tracking server {nobody}")


@pytest.mark.slow
def test_a_report_the_server_forbids_to_log_is_one_line(login_server, tmp_path, cifar_dir):
    """A user who may read but not write (the server's default permission, READ): the
    report is written to its file, and logging it to the grid run is refused in one line,
    not MLflow's traceback."""
    admin = {"MLFLOW_TRACKING_USERNAME": "admin", "MLFLOW_TRACKING_PASSWORD": ADMIN_PASSWORD}
    grid = _grid(tmp_path, GRID.replace("name: bad", "name: forbidden"))
    ran = run_cvlib("run", grid, "--workers", "1", "--tracking-uri", login_server,
                    "--data-dir", str(cifar_dir), env_extra=admin)
    assert ran.returncode == 0, ran.stderr[-3000:]
    create_user(login_server, "reader", "reader-Password-5678")
    page = tmp_path / "forbidden.html"
    result = run_cvlib("report", "--tracking-uri", login_server, "--experiment", "forbidden",
                       "--out", str(page),
                       env_extra={"MLFLOW_TRACKING_USERNAME": "reader",
                                  "MLFLOW_TRACKING_PASSWORD": "reader-Password-5678"})
    _one_line_refusal(result, f"the tracking server {login_server} does not let 'reader'")
    assert page.stat().st_size > 10_000


@pytest.mark.parametrize("uri, meant", [
    ("htp://127.0.0.1:5000", "did you mean 'http://127.0.0.1:5000'?"),
    ("localhost:5000", "did you mean 'http://localhost:5000'?"),
    ("postgres://cvlib:Db-Secret-42@db.lab.example/mlflow",
     "did you mean 'postgresql://cvlib:***@db.lab.example/mlflow'?"),
    ("mlruns", "postgresql://USER@HOST[:PORT]/DATABASE"),
])
@pytest.mark.parametrize("command", ["table", "run"])
def test_a_store_of_an_unknown_kind_lists_the_kinds(tmp_path, uri, meant, command):
    args = ["run", _grid(tmp_path), "--dry-run"] if command == "run" else ["table"]
    result = run_cvlib(*args, "--tracking-uri", uri)
    line = _one_line_refusal(result, "a tracking URI is one of http://HOST:PORT, "
                                     "https://HOST[:PORT], sqlite:///PATH/mlflow.db, "
                                     "postgresql://USER@HOST[:PORT]/DATABASE")
    assert meant in line and "Db-Secret-42" not in result.stdout + result.stderr
    assert "registry" not in line


def test_a_database_that_is_down_is_one_line_at_once(tmp_path):
    """A PostgreSQL store whose server is stopped: one try, one line naming the database
    without its password (MLflow alone retries for minutes, a log line per try)."""
    try:
        with team_services.throwaway_postgres(password="Db-Secret-42") as database:
            uri = database("stopped")
    except team_services.PostgresMissing as missing:
        service_missing(str(missing))
    for command in (["table"], ["run", _grid(tmp_path), "--workers", "1"]):
        result = run_cvlib(*command, "--tracking-uri", uri, timeout=90)
        host = uri.rpartition("@")[2]
        _one_line_refusal(result, f"cannot reach the database postgresql://postgres@{host}")
        assert "Db-Secret-42" not in result.stdout + result.stderr


def test_a_database_password_in_the_uri_logs_in_and_is_never_shown(tmp_path):
    """The password of a PostgreSQL store given in --tracking-uri reaches libpq (the server
    asks for it over TCP) in the command and its workers, and no output shows it."""
    try:
        with team_services.throwaway_postgres(password="Db-Secret-42") as database:
            uri = database("guarded")
            trained = run_cvlib("run", _grid(tmp_path), "--workers", "2", "--tracking-uri", uri,
                                timeout=300)
            table = run_cvlib("table", "--tracking-uri", uri, "--format", "csv")
    except team_services.PostgresMissing as missing:
        service_missing(str(missing))
    assert trained.returncode == 0, trained.stderr
    assert table.returncode == 0, table.stderr
    assert len(table.stdout.strip().splitlines()) > 1
    for result in (trained, table):
        assert "Db-Secret-42" not in result.stdout + result.stderr


@pytest.mark.parametrize("out, meant", [("results.xlsx", ""), ("results.json", ""),
                                        ("full.latex", "; did you mean '.tex'?"),
                                        ("results", "")])
def test_a_table_file_of_an_unknown_format_lists_the_formats(tiny_store, tmp_path, out,
                                                             meant):
    uri, _, _ = tiny_store
    result = run_cvlib("table", "--tracking-uri", uri, "--out", str(tmp_path / out))
    line = _one_line_refusal(result, "the table is written as .csv, .md, .tex, .html, or in "
                                     "--format csv|html|latex|markdown")
    assert line.endswith(meant or "markdown")
    assert not (tmp_path / out).exists()
    assert run_cvlib("table", "--tracking-uri", uri, "--format", "csv",
                     "--out", str(tmp_path / out)).returncode == 0


@pytest.mark.parametrize("args, message", [
    (["run", "GRID", "--workers", "0"], "cvlib run: error: argument --workers: must be at "
                                        "least 1, got 0 (see cvlib run --help)"),
    (["table", "--format", "xlsx"], "argument --format: invalid choice: 'xlsx'"),
    (["tabel"], "argument COMMAND: invalid choice: 'tabel'"),
    (["run"], "the following arguments are required: GRID.yaml"),
])
def test_every_argparse_error_is_one_line(tmp_path, args, message):
    result = run_cvlib(*[_grid(tmp_path) if arg == "GRID" else arg for arg in args])
    _one_line_refusal(result, message)
    assert "usage:" not in result.stderr


@pytest.mark.parametrize("override, message", [
    ("model.activation=tahn", "unknown model.activation 'tahn'; valid: relu"),
    ("model.activaton=tanh", "unknown key model.activaton; valid keys of 'model'"),
    ("modle.bn=none", "unknown key 'modle.bn'"),
    ("grid.model.initializer=[he, glorrot]", "unknown model.initializer 'glorrot'"),
])
def test_a_typo_gets_the_name_it_meant(tmp_path, override, message):
    result = run_cvlib("run", _grid(tmp_path), "--dry-run", "--set", override)
    line = _one_line_refusal(result, message)
    meant = {"tahn": "'tanh'", "activaton": "'model.activation'", "modle": "'model.bn'",
             "glorrot": "'glorot'"}
    assert line.endswith(f"did you mean {next(v for k, v in meant.items() if k in override)}?")


def test_a_refused_host_name_is_recognised_by_mlflow_s_own_words():
    from mlflow.server.security_utils import INVALID_HOST_MSG

    from cvlib.tracking.failures import INVALID_HOST_TEXT

    assert INVALID_HOST_TEXT in INVALID_HOST_MSG


@pytest.mark.parametrize("command, port", [("ui", "0"), ("server", "65536"), ("ui", "-1")])
def test_a_port_is_1_to_65535(capsys, command, port):
    with pytest.raises(SystemExit) as stopped:
        cli.main([command, "--port", port])
    assert stopped.value.code == 2
    [line] = capsys.readouterr().err.strip().splitlines()
    assert f"argument --port: must be a port from 1 to 65535, got {port}" in line

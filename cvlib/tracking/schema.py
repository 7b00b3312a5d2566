"""The run schema: every tag, param, metric prefix and artifact path that cvlib writes to
MLflow, named once. Writers and readers import these names; readers hand out
DataFrames whose columns are the short names below (``cell``, ``outcome``,
``model.activation``, ``val_accuracy``), never MLflow's ``tags.``/``params.`` strings.

MLflow-free, so that the training side and the CLI can name things without importing it.
"""
from __future__ import annotations

# --- Tags. ---
# A cell's run: the stable hash of its settings and seed (cells.Cell.cell_hash).
CELL_TAG = "cvlib.cell"
# Every run of a grid: the grid's name.
GRID_TAG = "cvlib.grid"
# A cell's result: one of OUTCOMES.
OUTCOME_TAG = "cvlib.outcome"
# A failed or killed run: the one-line reason.
ERROR_TAG = "cvlib.error"
# A diverged cell: the epoch (from 1) and the reason.
DIVERGED_AT_TAG = "cvlib.diverged_at"
DIVERGENCE_TAG = "cvlib.divergence"
# The process that owns a run (tracking.owner), and its last sign of life (unix seconds),
# for resume: its host name, pid, the kernel's boot id, its pid namespace
# (/proc/self/ns/pid), and its start in clock ticks since boot.
HOST_TAG = "cvlib.host"
PID_TAG = "cvlib.pid"
BOOT_ID_TAG = "cvlib.boot_id"
PID_NAMESPACE_TAG = "cvlib.pid_namespace"
PROCESS_START_TAG = "cvlib.process_start"
HEARTBEAT_TAG = "cvlib.heartbeat"
# A FINISHED run that a --rerun replaced: the run that replaced it.
SUPERSEDED_TAG = "cvlib.superseded_by"
# Successive halving: the rung a cell ended at (from 0), and the search strategy.
RUNG_TAG = "cvlib.rung"
SEARCH_TAG = "cvlib.search"
# A sampling search's trial (search.strategy random or tpe): its number (from 0; the
# order in which a resumed search tells the trials to Optuna again) and its sampled
# values as JSON (dotted key -> value).
TRIAL_TAG = "cvlib.trial"
TRIAL_VALUES_TAG = "cvlib.trial_values"
# Where a cell's run trained: each stage's host and process, or Ray node, in order.
TRAINED_ON_TAG = "cvlib.trained_on"
# Every run: the key cvlib created it under, so that a write sent twice (a retry after a
# lost answer, a journal's replay) never creates it twice (tracking.store_writes).
RUN_KEY_TAG = "cvlib.run_key"
# A cell whose plots could not be drawn: why.
PLOTS_ERROR_TAG = "cvlib.plots_error"
# A cell run that ended FINISHED while its plots were still being drawn: PLOTS_PENDING
# until they are attached (PLOTS_DRAWN) or fail (PLOTS_FAILED, with PLOTS_ERROR_TAG). A
# later command draws the pending plots of a dead command's runs from their metrics and
# statistics table (engine.plot_repair).
PLOTS_TAG = "cvlib.plots"
PLOTS_PENDING, PLOTS_DRAWN, PLOTS_FAILED = "pending", "drawn", "failed"
# A cell's run that holds its trained model: the model's artifact path (MODEL_FOLDER).
MODEL_TAG = "cvlib.model"
# A grid's parent run: the versions of the software that trained it, one tag each.
VERSION_TAG_PREFIX = "cvlib.version."
# A cell's run: what its figures depend on besides its settings, gathered where it
# trained (engine.provenance): the CPU's model and its vector extensions (from
# CPU_FLAGS, space-separated, or "none"), TensorFlow's intra-op and inter-op threads,
# oneDNN ("on" or "off", and whether TF_ENABLE_ONEDNN_OPTS or TensorFlow's default
# chose it), TensorFlow's op determinism ("on" or "off"), the SHA-256 of the cell's
# arrays as trained and evaluated, and the grid file's git commit and whether its
# repository had uncommitted changes ("true" or "false"; absent outside a repository).
ENVIRONMENT_TAG_PREFIX = "cvlib.env."
CPU_TAG = "cvlib.env.cpu"
CPU_FLAGS_TAG = "cvlib.env.cpu_flags"
INTRA_OP_THREADS_TAG = "cvlib.env.intra_op_threads"
INTER_OP_THREADS_TAG = "cvlib.env.inter_op_threads"
ONEDNN_TAG = "cvlib.env.onednn"
DETERMINISTIC_TAG = "cvlib.env.deterministic"
DATA_CHECKSUM_TAG = "cvlib.env.data_sha256"
GIT_COMMIT_TAG = "cvlib.env.git_commit"
GIT_DIRTY_TAG = "cvlib.env.git_dirty"
# The /proc/cpuinfo flags recorded in CPU_FLAGS_TAG: the vector extensions whose kernels
# TensorFlow and oneDNN choose between, and so change the order of float sums.
CPU_FLAGS = ("avx", "avx2", "fma", "avx512f", "avx512_vnni", "avx512_bf16", "amx_tile",
             "amx_bf16", "amx_int8")
# The environment's tags as reader columns, in the order reports show them.
ENVIRONMENT_COLUMNS = {CPU_TAG: "cpu", CPU_FLAGS_TAG: "cpu_flags",
                       INTRA_OP_THREADS_TAG: "intra_op_threads",
                       INTER_OP_THREADS_TAG: "inter_op_threads", ONEDNN_TAG: "onednn",
                       DETERMINISTIC_TAG: "deterministic", DATA_CHECKSUM_TAG: "data_sha256",
                       GIT_COMMIT_TAG: "git_commit", GIT_DIRTY_TAG: "git_dirty"}
# MLflow's own tags that cvlib sets or reads.
PARENT_TAG = "mlflow.parentRunId"
RUN_NAME_TAG = "mlflow.runName"
# An experiment's kind: MLflow's UI opens a model-training experiment on its runs table
# (its default for an untagged experiment is the GenAI pages).
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
MODEL_TRAINING_KIND = "custom_model_development"
# A view of the runs table that a link can open (MLflow's "share" of a view):
# the experiment tag PREFIX + KEY holds the view as JSON; the link says
# ?viewStateShareKey=KEY.
SHARED_VIEW_TAG_PREFIX = "mlflow.sharedViewState."
CVLIB_VIEW_KEY = "cvlib"

# Tags as reader columns, by their short names.
TAG_COLUMNS = {CELL_TAG: "cell", GRID_TAG: "grid", OUTCOME_TAG: "outcome",
               ERROR_TAG: "error", DIVERGED_AT_TAG: "diverged_at",
               DIVERGENCE_TAG: "divergence", RUNG_TAG: "rung", SEARCH_TAG: "search",
               TRIAL_TAG: "trial", TRIAL_VALUES_TAG: "trial_values",
               PLOTS_ERROR_TAG: "plots_error", TRAINED_ON_TAG: "trained_on",
               PARENT_TAG: "parent_run_id",
               RUN_NAME_TAG: "run_name", **ENVIRONMENT_COLUMNS}
# A cell run's model as readers show it: the URI MLflow loads it from, where it has one.
MODEL_URI_COLUMN = "model_uri"
# A run's own columns in readers' tables.
RUN_COLUMNS = ("run_id", "status", "start_time", MODEL_URI_COLUMN)

# --- Outcomes (OUTCOME_TAG), best first. ---
# pruned: a search's pruner stopped the trial early (its run keeps the epochs it trained).
OK, PRUNED, DIVERGED, ERROR = "ok", "pruned", "diverged", "error"
OUTCOMES = (OK, PRUNED, DIVERGED, ERROR)

# --- Params. ---
# A cell's settings, under their dotted keys (``model.activation``); these prefixes.
SETTING_PREFIXES = ("data.", "model.", "train.")
# The cell's seed.
SEED_PARAM = "seed"
# Short params for the UI's columns, beside the full dotted settings.
SHORT_PARAMS = {"activation": "model.activation", "initializer": "model.initializer",
                "bn": "model.bn"}
# The preprocessing's training-split statistics, per channel (``preprocess.mean``).
PREPROCESS_PARAM_PREFIX = "preprocess."
# A grid's parent run: cells this run trains, workers, seeds, and each axis (``grid.KEY``).
CELLS_PARAM = "cells"
WORKERS_PARAM = "workers"
# A grid's or a study's parent run: what trained its cells (BACKENDS), and on Ray the
# cluster's address (without credentials), resources, and each cell's share of them.
BACKEND_PARAM = "backend"
LOCAL_BACKEND, RAY_BACKEND = "local", "ray"
BACKENDS = (LOCAL_BACKEND, RAY_BACKEND)
RAY_ADDRESS_PARAM = "ray.address"
RAY_RESOURCES_PARAM = "ray.resources"
RAY_CELL_RESOURCES_PARAM = "ray.per_cell"
# A grid's parent run on Ray: the median seconds per cell that Ray's dispatch added (from
# hand-out to the actor's start, and from its end to the driver).
RAY_DISPATCH_METRIC = "ray.dispatch_s"
SEEDS_PARAM = "seeds"
AXIS_PARAM_PREFIX = "grid."
# A grid's parent run: the --set overrides applied to its grid file, as a JSON list of
# "KEY=VALUE" (besides the settings every cell shares, under their dotted keys).
OVERRIDES_PARAM = "overrides"
# MLflow keeps at most this many characters of a param's value.
PARAM_VALUE_LIMIT = 6000
# Tag values cvlib writes are cut to this length.
TAG_VALUE_LIMIT = 5000

# --- Metrics. ---
# Per epoch (step = epoch; 0 is the initialized model).
LOSS, ACCURACY, VAL_LOSS, VAL_ACCURACY = "loss", "accuracy", "val_loss", "val_accuracy"
EPOCH_TIME, IMAGES_PER_S = "epoch_time_s", "images_per_s"
# After the last epoch.
TEST_LOSS, TEST_ACCURACY = "test_loss", "test_accuracy"
# Statistics: act/<layer>/<statistic>, grad/<layer>/norm, update_ratio/<layer>.
ACTIVATION_PREFIX = "act/"
GRADIENT_PREFIX = "grad/"
UPDATE_RATIO_PREFIX = "update_ratio/"
# Their headline figures of the last step, for the UI's columns.
STATS_SUMMARY = ("act_std_first", "act_std_last", "act_saturated_max", "act_dead_max")
# Per gradient step (step = gradient step, from 1): batch/loss, batch/accuracy.
BATCH_PREFIX = "batch/"

# --- Artifacts. ---
# A grid's parent run: the grid as it ran (grids.Grid.resolved_text: overrides applied,
# defaults filled in), and the grid file as written.
GRID_FILE = "grid.yaml"
GRID_SOURCE_FILE = "grid_file.yaml"
# A cell's run: every statistic (histograms included), and its plots' folder.
STATS_TABLE = "stats/activations.parquet"
PLOTS_FOLDER = "plots"
# A cell's run: its trained model, an MLflow model of the Keras flavour taking raw uint8
# images (runs:/RUN_ID/model).
MODEL_FOLDER = "model"
# A failed run: the traceback.
ERROR_FILE = "error.txt"
# The newest grid run of an experiment: its HTML report.
REPORT_FILE = "report.html"

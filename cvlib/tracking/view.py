"""How MLflow's UI opens a cvlib experiment: on its runs table, with the columns that
answer the lecture's questions, sorted by validation accuracy. MLflow-free.

MLflow's UI reads an experiment's view from a "shared view" that an experiment tag holds
(``schema.SHARED_VIEW_TAG_PREFIX + KEY``), named by a link's ``viewStateShareKey``: the
columns, the sort and the filter. (A link that also carries ``orderByKey`` or
``searchFilter`` makes the UI ignore the shared view.) Which parent runs are expanded is
not part of a shared view in MLflow 3.17; the view's filter shows the cell runs without
their grid's parent run instead.
"""
from __future__ import annotations

import json
import urllib.parse

from cvlib.tracking import schema

# The runs table's columns: the settings and the accuracies, as MLflow names columns.
VIEW_PARAMS = ("activation", "initializer", "bn", schema.SEED_PARAM)
VIEW_METRICS = (schema.VAL_ACCURACY, schema.TEST_ACCURACY)
ORDER_BY = f"metrics.`{schema.VAL_ACCURACY}`"
# Cell runs only: a grid's parent run would otherwise fold its cells away.
CELL_RUNS_FILTER = f"tags.`{schema.CELL_TAG}` != ''"


def shared_view() -> str:
    """The JSON of cvlib's runs view, as the experiment tag holds it."""
    return json.dumps({
        "selectedColumns": [f"params.`{name}`" for name in VIEW_PARAMS]
        + [f"metrics.`{name}`" for name in VIEW_METRICS],
        "orderByKey": ORDER_BY, "orderByAsc": False, "searchFilter": CELL_RUNS_FILTER})


def experiment_tags() -> dict[str, str]:
    """The tags that make MLflow's UI open an experiment as cvlib's runs table."""
    return {schema.EXPERIMENT_KIND_TAG: schema.MODEL_TRAINING_KIND,
            schema.SHARED_VIEW_TAG_PREFIX + schema.CVLIB_VIEW_KEY: shared_view()}


def runs_page_url(base: str, experiment_id: str) -> str:
    """The link to an experiment's runs table in cvlib's view.

    Args:
        base: The UI's address, e.g. ``http://127.0.0.1:5000``.
        experiment_id: The experiment's MLflow id.
    """
    query = urllib.parse.urlencode({"viewStateShareKey": schema.CVLIB_VIEW_KEY})
    return f"{base.rstrip('/')}/#/experiments/{experiment_id}/runs?{query}"

"""Requests to a tracking server sent once, without MLflow's own retries.

MLflow's HTTP client retries a request whose answer was lost, a POST too (its urllib3
``Retry`` allows every method: mlflow/utils/request_utils.py): a run creation that the
server had committed is sent again, and the run is created twice. The calls here are
sent once (MLflow keeps a session per retry setting, so ``max_retries=0`` gets one of
its own and changes nothing for the other calls); the caller decides what a retry
means (tracking.store_writes looks the run up by its key before it creates it again).
"""
from __future__ import annotations

from mlflow.entities import ViewType
from mlflow.protos.service_pb2 import CreateRun, SearchExperiments
from mlflow.store.tracking.rest_store import RestStore
from mlflow.tracking import MlflowClient
from mlflow.utils.mlflow_tags import MLFLOW_USER
from mlflow.utils.rest_utils import http_request, verify_rest_response

# A probe that waits longer than this for its answer counts as no answer.
PROBE_SECONDS = 10


def _rest_store(client: MlflowClient) -> RestStore | None:
    """The client's tracking server, or None for a database (no answer to lose)."""
    store = client._tracking_client.store  # MLflow's client has no public accessor
    return store if isinstance(store, RestStore) else None


def _send_once(store: RestStore, api, body: dict, timeout: float | None = None) -> dict:
    endpoint, method = RestStore._METHOD_TO_INFO[api]
    response = http_request(store.get_host_creds(), endpoint, method, max_retries=0,
                            timeout=timeout, json=body)
    return verify_rest_response(response, endpoint).json()


def create_run_once(client: MlflowClient, experiment_id: str, start_time: int,
                    tags: dict[str, str], run_name: str) -> str:
    """Create a run with one request: a lost answer raises, and is never resent.

    Returns:
        The run's id.

    Raises:
        MlflowException: The store refused, or its answer was lost (the run may exist).
    """
    store = _rest_store(client)
    if store is None:
        return client.create_run(experiment_id, start_time=start_time, tags=tags,
                                 run_name=run_name).info.run_id
    answer = _send_once(store, CreateRun, {
        "experiment_id": str(experiment_id), "user_id": tags.get(MLFLOW_USER, "unknown"),
        "start_time": start_time, "run_name": run_name,
        "tags": [{"key": key, "value": value} for key, value in tags.items()]})
    return answer["run"]["info"]["run_id"]


def store_answers(client: MlflowClient) -> bool:
    """Whether the store answers a request that reaches its database, now (one request,
    at most PROBE_SECONDS): a write that fails while it does fails for its own reasons."""
    store = _rest_store(client)
    try:
        if store is None:
            client.search_experiments(max_results=1, view_type=ViewType.ALL)
        else:
            _send_once(store, SearchExperiments, {"max_results": 1}, timeout=PROBE_SECONDS)
    except Exception:  # MLflow raises many kinds for a server away or failing
        return False
    return True

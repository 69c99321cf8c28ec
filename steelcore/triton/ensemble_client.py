"""The one Triton client of the workers: frames in, per-class probabilities, pixel counts and RLE out.

Every inference request goes through :class:`TritonEnsembleClient`, so timeouts and retries live
in one place (the tensor names: inference_result.py; readiness probes and model control:
readiness.py, repository.py). gRPC is the default (``settings.triton_protocol``);
HTTP is selectable. Requests are asynchronous: :meth:`TritonEnsembleClient.infer_async` returns a
``concurrent.futures.Future`` and up to ``max_in_flight`` requests travel at once (the call blocks
beyond that, which is the back-pressure a consumer loop wants). Batches larger than the model's
``max_batch_size`` are split and the parts reassembled.

A request that finds the server unavailable (connection refused, server restarting) is retried
with exponential backoff; a request the server rejects (wrong shape, model error) or that runs
past ``timeout_s`` is not, since sending it again would fail again or add load to a busy server.
"""

from __future__ import annotations

import logging
import threading
import time
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any, Literal

import numpy as np

from steelcore.settings import Settings, get_settings
from steelcore.triton.exceptions import (
    TritonClientError,
    TritonInferenceError,
    TritonUnavailableError,
    classify_error,
)
from steelcore.triton.inference_result import (
    INPUT_NAME,
    OUTPUT_NAMES,
    VERSION_OUTPUT,
    EnsembleResult,
    gather_parts,
    validate_frames,
)

log = logging.getLogger(__name__)

Protocol = Literal["grpc", "http"]
_DEFAULT_MAX_BATCH = 8


class TritonEnsembleClient:
    """Client of the ``steel_ensemble`` (or ``steel_cascade``) model of a Triton server.

    ``model_version`` ('' = the server's choice by the model's version policy) is asked for every
    request unless a call names another: the shadow run asks ``steel_cascade`` for a version the
    ensemble does not serve."""

    def __init__(
        self,
        url: str,
        protocol: Protocol = "grpc",
        model_name: str = "steel_ensemble",
        timeout_s: float = 10.0,
        *,
        max_in_flight: int = 4,
        retries: int = 3,
        backoff_s: float = 0.2,
        model_version: str = "",
    ) -> None:
        if protocol not in ("grpc", "http"):
            raise ValueError(f"protocol must be 'grpc' or 'http', got {protocol!r}")
        if timeout_s <= 0 or max_in_flight < 1 or retries < 0 or backoff_s < 0:
            raise ValueError("timeout_s must be > 0, max_in_flight >= 1, retries and backoff_s >= 0")
        self.url = url.removeprefix("grpc://").removeprefix("http://")
        self.protocol = protocol
        self.model_name = model_name
        self.model_version = model_version
        self.timeout_s = timeout_s
        self.max_in_flight = max_in_flight
        self.retries = retries
        self.backoff_s = backoff_s
        self._slots = threading.BoundedSemaphore(max_in_flight)
        self._max_batch: int | None = None
        self._has_version: bool | None = None  # whether the model declares VERSION_OUTPUT
        self._local = threading.local()
        self._http_clients: list[Any] = []
        self._lock = threading.Lock()
        self._closed = False
        if protocol == "grpc":
            import tritonclient.grpc as grpcclient

            self._module: Any = grpcclient
            self._grpc = grpcclient.InferenceServerClient(self.url)
            self._pool: ThreadPoolExecutor | None = None
        else:
            import tritonclient.http as httpclient

            self._module = httpclient
            self._grpc = None
            # The HTTP client is not thread-safe: one per pool thread.
            self._pool = ThreadPoolExecutor(max_in_flight, thread_name_prefix="triton-http")

    @classmethod
    def from_settings(
        cls, settings: Settings | None = None, *, model_name: str | None = None
    ) -> TritonEnsembleClient:
        """A client for ``STEEL_TRITON_URL``, or for the embedded server's port when it is unset."""
        s = settings or get_settings()
        url = s.triton_url
        if not url:
            port = s.triton_grpc_port if s.triton_protocol == "grpc" else s.triton_http_port
            url = f"127.0.0.1:{port}"
        return cls(url, s.triton_protocol, model_name or s.triton_model, s.triton_timeout_s)

    # --- health ------------------------------------------------------------------------------
    def ready(self) -> bool:
        """True when the server is live and the model is ready; never raises."""
        try:
            client = self._client()
            return bool(client.is_server_live()) and bool(
                client.is_model_ready(self.model_name, self.model_version)
            )
        except Exception as exc:  # any failure means "not ready"
            log.debug("triton readiness check failed: %s", exc)
            return False

    def wait_ready(self, timeout_s: float = 60.0, poll_s: float = 0.5) -> None:
        """Block until :meth:`ready`; TritonUnavailableError after ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not self.ready():
            if time.monotonic() > deadline:
                raise TritonUnavailableError(
                    f"Triton at {self.url} ({self.protocol}) has no ready model {self.model_name!r} "
                    f"after {timeout_s:.0f} s"
                )
            time.sleep(poll_s)

    def max_batch_size(self) -> int:
        """The model's max_batch_size, asked once (8 when the server does not say)."""
        self._read_config()
        return self._max_batch or _DEFAULT_MAX_BATCH

    def reports_version(self) -> bool:
        """Whether the model answers MODEL_VERSION (asked once; False while the server does not say)."""
        self._read_config()
        return bool(self._has_version)

    def _read_config(self) -> None:
        """max_batch_size and the declared outputs, from the model's config (one call for both).

        The config is the model's, not a version's: every version of a model shares config.pbtxt."""
        if self._max_batch is not None:
            return
        try:
            config = self._client().get_model_config(self.model_name)
            if self.protocol == "grpc":
                value = config.config.max_batch_size
                outputs = [o.name for o in config.config.output]
            else:
                value = config["max_batch_size"]
                outputs = [o["name"] for o in config.get("output", [])]
        except Exception as exc:  # fall back, the request itself will report errors
            log.debug("could not read %s's config: %s", self.model_name, exc)
            return
        self._has_version = VERSION_OUTPUT in outputs
        self._max_batch = int(value) or _DEFAULT_MAX_BATCH

    # --- inference ---------------------------------------------------------------------------
    def infer(self, frames: np.ndarray, *, model_version: str | None = None) -> EnsembleResult:
        """Blocking inference of frames uint8 [B, H, W]."""
        return self.infer_async(frames, model_version=model_version).result()

    def infer_async(self, frames: np.ndarray, *, model_version: str | None = None) -> Future[EnsembleResult]:
        """Start inference of frames uint8 [B, H, W]; the future raises a TritonClientError on failure.

        ``model_version``: this request's version of the model (None = the client's own)."""
        if self._closed:
            raise TritonClientError("client is closed")
        frames = validate_frames(frames)
        step = self.max_batch_size()
        version = self.model_version if model_version is None else model_version
        parts = [self._submit(frames[i : i + step], version) for i in range(0, frames.shape[0], step)]
        if len(parts) == 1:
            return parts[0]
        return gather_parts(parts)

    def close(self) -> None:
        self._closed = True
        if self._pool is not None:
            self._pool.shutdown(wait=True)
        # Open keep-alive connections would hold a stopping server for its whole exit timeout.
        with self._lock:
            clients, self._http_clients = self._http_clients, []
        for client in clients:
            client.close()
        if self._grpc is not None:
            self._grpc.close()

    def __enter__(self) -> TritonEnsembleClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # --- internals ---------------------------------------------------------------------------
    def _client(self) -> Any:
        if self._grpc is not None:
            return self._grpc
        client = getattr(self._local, "client", None)
        if client is None:
            client = self._module.InferenceServerClient(
                self.url, connection_timeout=self.timeout_s, network_timeout=self.timeout_s
            )
            self._local.client = client
            with self._lock:
                self._http_clients.append(client)
        return client

    def _request(self, frames: np.ndarray) -> tuple[list[Any], list[Any]]:
        module = self._module
        tensor = module.InferInput(INPUT_NAME, list(frames.shape), "UINT8")
        tensor.set_data_from_numpy(frames)
        names = (*OUTPUT_NAMES, VERSION_OUTPUT) if self._has_version else OUTPUT_NAMES
        if self.protocol == "grpc":
            outputs = [module.InferRequestedOutput(name) for name in names]
        else:
            outputs = [module.InferRequestedOutput(name, binary_data=True) for name in names]
        return [tensor], outputs

    @staticmethod
    def _result(response: Any) -> EnsembleResult:
        rles = response.as_numpy("RLE")
        versions = response.as_numpy(VERSION_OUTPUT)
        return EnsembleResult(
            probs=response.as_numpy("PROBS").astype(np.float32, copy=False),
            pixel_counts=response.as_numpy("PIXEL_COUNTS").astype(np.int64, copy=False),
            rles=[[r.decode() if isinstance(r, bytes) else str(r) for r in row] for row in rles],
            versions=None if versions is None else versions.reshape(len(rles), -1)[:, 0].astype(np.int64),
        )

    def _submit(self, frames: np.ndarray, version: str) -> Future[EnsembleResult]:
        self._slots.acquire()
        future: Future[EnsembleResult] = Future()
        future.add_done_callback(lambda _: self._slots.release())
        if self.protocol == "grpc":
            self._grpc_attempt(frames, future, version, attempt=0)
        else:
            assert self._pool is not None
            self._pool.submit(self._http_call, frames, future, version)
        return future

    def _retry_delay(self, error: TritonClientError, attempt: int) -> float | None:
        if not isinstance(error, TritonUnavailableError) or attempt >= self.retries:
            return None
        delay = self.backoff_s * (2**attempt)
        log.warning(
            "Triton %s unavailable (%s); retry %d/%d in %.2f s",
            self.url,
            error,
            attempt + 1,
            self.retries,
            delay,
        )
        return delay

    def _grpc_attempt(
        self, frames: np.ndarray, future: Future[EnsembleResult], version: str, attempt: int
    ) -> None:
        inputs, outputs = self._request(frames)

        def done(result: Any, error: Any) -> None:
            if error is None:
                try:
                    future.set_result(self._result(result))
                except Exception as exc:  # a malformed answer fails this future only
                    future.set_exception(TritonInferenceError(f"unexpected response: {exc}"))
                return
            failure = classify_error(error)
            delay = self._retry_delay(failure, attempt)
            if delay is None or self._closed:
                future.set_exception(failure)
            else:
                timer = threading.Timer(delay, self._grpc_attempt, (frames, future, version, attempt + 1))
                timer.daemon = True
                timer.start()

        try:
            assert self._grpc is not None
            self._grpc.async_infer(
                self.model_name,
                inputs,
                done,
                model_version=version,
                outputs=outputs,
                client_timeout=self.timeout_s,
            )
        except Exception as exc:  # reported through the future like any failure
            done(None, exc)

    def _drop_thread_client(self) -> None:
        client = getattr(self._local, "client", None)
        self._local.client = None
        if client is not None:
            with self._lock:
                if client in self._http_clients:
                    self._http_clients.remove(client)
            client.close()

    def _http_call(self, frames: np.ndarray, future: Future[EnsembleResult], version: str) -> None:
        attempt = 0
        while True:
            inputs, outputs = self._request(frames)
            try:
                response = self._client().infer(
                    self.model_name, inputs, model_version=version, outputs=outputs
                )
                future.set_result(self._result(response))
                return
            except Exception as exc:  # classified, then retried or reported
                failure = classify_error(exc)
                delay = self._retry_delay(failure, attempt)
                if delay is None or self._closed:
                    future.set_exception(failure)
                    return
                # A refused connection leaves the pooled client unusable: start a fresh one.
                self._drop_thread_client()
                time.sleep(delay)
                attempt += 1

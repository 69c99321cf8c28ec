"""Is a Triton server up, which versions of a model does it serve, what does its repository hold.

Used by `steel status` (stack/embedded_stack.py) and the dashboard's health page. HTTP calls go
through urllib (no client object to build for one GET); gRPC ones through tritonclient.
"""

from __future__ import annotations

import json
import urllib.request

from steelcore.service_urls import ServiceUnavailableError, read_stack, resolve_url
from steelcore.settings import Settings


def _http_get(url: str, timeout_s: float) -> bytes:
    with urllib.request.urlopen(url, timeout=timeout_s) as response:
        return bytes(response.read())


def probe_triton_http(http_url: str, model: str, timeout_s: float = 2.0) -> str:
    """Server and ``model`` ready over HTTP; return the server version. Raises OSError otherwise."""
    _http_get(f"http://{http_url}/v2/health/ready", timeout_s)
    _http_get(f"http://{http_url}/v2/models/{model}/ready", timeout_s)
    meta = json.loads(_http_get(f"http://{http_url}/v2", timeout_s))
    return f"Triton {meta.get('version', '?')}"


def probe_triton_grpc(grpc_url: str, model: str, timeout_s: float = 2.0) -> str:
    import tritonclient.grpc as grpcclient

    client = grpcclient.InferenceServerClient(grpc_url)
    try:
        if not client.is_server_ready(client_timeout=timeout_s):
            raise ConnectionError(f"Triton at {grpc_url} is not ready")
        if not client.is_model_ready(model, client_timeout=timeout_s):
            raise ConnectionError(f"Triton at {grpc_url}: model {model} is not ready")
        meta = client.get_server_metadata(client_timeout=timeout_s)
    finally:
        client.close()
    return f"Triton {meta.version}"


def _http_address(settings: Settings) -> str | None:
    """The HTTP address when one is known (the embedded server records one), else None."""
    record = read_stack(settings.run_dir).get("triton", {}) if not settings.triton_url else {}
    return record.get("http_url") or (
        resolve_url("triton", settings) if settings.triton_protocol == "http" else None
    )


def triton_model_versions(settings: Settings, timeout_s: float) -> tuple[list[str] | None, str | None]:
    """(versions Triton serves of settings.triton_model, error). Over HTTP when an HTTP address is
    known (the embedded server records one), else over gRPC."""
    model = settings.triton_model
    try:
        http_url = _http_address(settings)
        if http_url:
            with urllib.request.urlopen(f"http://{http_url}/v2/models/{model}", timeout=timeout_s) as r:
                return [str(v) for v in json.loads(r.read()).get("versions", [])], None
        import tritonclient.grpc as grpcclient

        client = grpcclient.InferenceServerClient(resolve_url("triton", settings))
        try:
            meta = client.get_model_metadata(model, client_timeout=timeout_s)
        finally:
            client.close()
        return [str(v) for v in meta.versions], None
    except ServiceUnavailableError as exc:
        return None, str(exc)
    except Exception as exc:  # down, not ready, or no such model: all shown as text
        return None, f"{type(exc).__name__}: {exc}"


def triton_repository_index(
    settings: Settings, timeout_s: float
) -> tuple[list[dict[str, str]] | None, str | None]:
    """(Triton's repository index: one {name, version, state, reason} per model version it knows,
    error). Over HTTP when an HTTP address is known, else over gRPC, as triton_model_versions."""
    try:
        http_url = _http_address(settings)
        if http_url:
            request = urllib.request.Request(
                f"http://{http_url}/v2/repository/index", data=b"{}", method="POST"
            )
            with urllib.request.urlopen(request, timeout=timeout_s) as r:
                rows = json.loads(r.read())
        else:
            import tritonclient.grpc as grpcclient

            client = grpcclient.InferenceServerClient(resolve_url("triton", settings))
            try:
                rows = client.get_model_repository_index(as_json=True, client_timeout=timeout_s)
            finally:
                client.close()
            rows = rows.get("models", [])
        return [
            {k: str(row.get(k, "")) for k in ("name", "version", "state", "reason")} for row in rows
        ], None
    except ServiceUnavailableError as exc:
        return None, str(exc)
    except Exception as exc:  # down or unreachable: shown as text
        return None, f"{type(exc).__name__}: {exc}"

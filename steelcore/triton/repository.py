"""Explicit-mode model control: asking a Triton server to (re)load a model of its repository.

The model lifecycle (stack/model_lifecycle.py) rewrites config.pbtxt files in the serving
repository, then loads each changed model here; a load re-reads the config from disk.
"""

from __future__ import annotations

from typing import Protocol

from steelcore.triton.exceptions import TritonUnavailableError


class ModelControl(Protocol):
    def load_model(self, model_name: str) -> None: ...

    def unload_model(self, model_name: str) -> None: ...


def model_control(url: str, protocol: str = "http") -> ModelControl:
    """A tritonclient for the model control API (explicit mode) at ``url`` (host:port); raises
    TritonUnavailableError when the server is not live."""
    if protocol == "grpc":
        import tritonclient.grpc as client_module
    else:
        import tritonclient.http as client_module  # type: ignore[no-redef]
    try:
        client = client_module.InferenceServerClient(url)
        if not client.is_server_live():
            raise TritonUnavailableError(f"Triton at {url} is not live")
    except TritonUnavailableError:
        raise
    except Exception as exc:  # connection refused and friends come in several types
        raise TritonUnavailableError(f"Triton at {url} cannot be reached: {exc}") from exc
    return client


def error_reason(exc: BaseException) -> str:
    """What a tritonclient error says (its message(), else str), for logs and user messages."""
    message = getattr(exc, "message", None)
    text = message() if callable(message) else str(exc)
    return text.strip() or type(exc).__name__

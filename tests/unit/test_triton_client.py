"""The workers' Triton client without a server: input checks, readiness, retries on UNAVAILABLE."""

from __future__ import annotations

import socket
import time

import numpy as np
import pytest

from steelcore.settings import Settings
from steelcore.severstal import FRAME_HEIGHT, FRAME_WIDTH
from steelcore.triton.ensemble_client import TritonEnsembleClient
from steelcore.triton.exceptions import TritonUnavailableError
from steelcore.triton.inference_result import EnsembleResult, validate_frames


def closed_port() -> int:
    """A port nothing listens on (bound, then released)."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize(
    ("frames", "message"),
    [
        (np.zeros((2, FRAME_HEIGHT, FRAME_WIDTH), np.float32), "uint8"),
        (np.zeros((FRAME_HEIGHT, FRAME_WIDTH), np.uint8), "shape"),
        (np.zeros((1, 200, 200), np.uint8), "shape"),
        (np.zeros((0, FRAME_HEIGHT, FRAME_WIDTH), np.uint8), "B >= 1"),
        ([[0]], "numpy array"),
    ],
)
def test_bad_frames_are_rejected_before_sending(frames: object, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        validate_frames(frames)  # type: ignore[arg-type]


@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_unreachable_server_is_not_ready_and_retried_with_backoff(protocol: str) -> None:
    client = TritonEnsembleClient(
        f"127.0.0.1:{closed_port()}",
        protocol,
        timeout_s=2.0,
        retries=2,
        backoff_s=0.1,  # type: ignore[arg-type]
    )
    try:
        assert client.ready() is False
        frames = np.zeros((1, FRAME_HEIGHT, FRAME_WIDTH), np.uint8)
        started = time.monotonic()
        with pytest.raises(TritonUnavailableError):
            client.infer(frames)
        # Two retries after 0.1 s and 0.2 s: the failure cannot come sooner than 0.3 s.
        assert time.monotonic() - started >= 0.3
    finally:
        client.close()


def test_settings_pick_the_embedded_port_and_protocol() -> None:
    grpc = TritonEnsembleClient.from_settings(Settings(triton_url=None, triton_grpc_port=18123))
    http = TritonEnsembleClient.from_settings(
        Settings(
            triton_url=None, triton_protocol="http", triton_http_port=18124, triton_model="steel_cascade"
        )
    )
    external = TritonEnsembleClient.from_settings(Settings(triton_url="triton-a:9001"))
    try:
        assert (grpc.url, grpc.protocol, grpc.model_name) == ("127.0.0.1:18123", "grpc", "steel_ensemble")
        assert (http.url, http.protocol, http.model_name) == ("127.0.0.1:18124", "http", "steel_cascade")
        assert external.url == "triton-a:9001"
    finally:
        for client in (grpc, http, external):
            client.close()


def test_results_concatenate_in_order() -> None:
    a = EnsembleResult(np.ones((1, 4), np.float32), np.ones((1, 4), np.int64), [["1 2", "", "", ""]])
    b = EnsembleResult(
        np.zeros((2, 4), np.float32), np.zeros((2, 4), np.int64), [[""] * 4, ["", "5 1", "", ""]]
    )
    joined = EnsembleResult.concatenate([a, b])
    assert len(joined) == 3
    assert joined.rles[0][0] == "1 2" and joined.rles[2][1] == "5 1"
    assert joined.probs[:, 0].tolist() == [1.0, 0.0, 0.0]

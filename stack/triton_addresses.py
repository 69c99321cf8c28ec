"""Where a Triton server listens, from its host and three ports: shared by the launcher
(stack.triton_server.TritonServer) and the stack's service wrapper (stack.triton_service)."""

from __future__ import annotations


class TritonAddresses:
    """``host:port`` addresses of the HTTP and gRPC endpoints and the metrics page's URL."""

    host: str
    http_port: int
    grpc_port: int
    metrics_port: int

    @property
    def http_url(self) -> str:
        return f"{self.host}:{self.http_port}"

    @property
    def grpc_url(self) -> str:
        return f"{self.host}:{self.grpc_port}"

    @property
    def metrics_url(self) -> str:
        return f"http://{self.host}:{self.metrics_port}/metrics"

"""The ext_proc gRPC server, health, the admin HTTP server and ``epp serve``."""

__all__: list[str] = []

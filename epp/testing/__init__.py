"""Test doubles that ship with the package, for this project's tests and plugin authors."""

from epp.testing.envoy_stream import ExtProcClient, StreamResult

__all__ = ["ExtProcClient", "StreamResult"]

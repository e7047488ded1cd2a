"""Overhead benchmark: Envoy direct vs. Envoy + no-op ext_proc vs. Envoy + the picker."""

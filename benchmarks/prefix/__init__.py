"""Prefix-cache micro-benchmark: hashing cost per request and index memory per block."""

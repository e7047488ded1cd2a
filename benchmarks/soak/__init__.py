"""Soak: many mixed requests through real Envoy, then check the picker holds nothing it should not."""

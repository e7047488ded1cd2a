"""The vocabulary of ``epp bundle``: options, the context renderers read, their output, errors.

Renderers (``epp.ops.bundle_manifests``, ``epp.ops.bundle_text``) are functions from a
``BundleContext`` to files by relative path; ``epp.ops.bundle`` runs them.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass

__all__ = [
    "CHECKSUMS",
    "DEFAULT_ENVOY_IMAGE",
    "DEFAULT_IMAGE",
    "BundleContext",
    "BundleError",
    "BundleOptions",
    "RenderedFile",
    "Renderer",
]

# A documented placeholder: there is no published image; build one and pass --image.
DEFAULT_IMAGE = "registry.example.com/epp:0.1.0"
DEFAULT_ENVOY_IMAGE = "envoyproxy/envoy:v1.40-latest"
DEFAULT_MODEL_SERVER_IMAGE = "vllm/vllm-openai:latest"
PICKER_NAME = "epp"
GRPC_PORT = 9002
GRPC_HEALTH_PORT = 9003
METRICS_PORT = 9090
ENVOY_PORT = 8081
ENVOY_ADMIN_PORT = 19000
CONFIG_MOUNT = "/config"
POOL_MOUNT = "/pool"
CHECKSUMS = "checksums.txt"
_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?$")


class BundleError(Exception):
    """A bundle that could not be made; ``where`` names the flag, config field or renderer(s)."""

    def __init__(self, where: str, reason: str) -> None:
        self.where = where
        self.reason = reason
        super().__init__(f"{where}: {reason}")


@dataclass(frozen=True, slots=True)
class BundleOptions:
    namespace: str = "default"
    image: str = DEFAULT_IMAGE
    pool_name: str = "inference-pool"
    model_server_port: int = 8000
    replicas: int = 1
    gateway_name: str = "inference-gateway"
    envoy_image: str = DEFAULT_ENVOY_IMAGE

    def validate(self) -> None:
        for flag, value in (("--namespace", self.namespace), ("--pool-name", self.pool_name),
                            ("--gateway-name", self.gateway_name)):
            if not _DNS_LABEL.match(value):
                raise BundleError(flag, f"{value!r} is not a DNS label (lower-case letters, digits, '-', "
                                        "at most 63 characters)")
        for flag, image in (("--image", self.image), ("--envoy-image", self.envoy_image)):
            if not image or any(ch.isspace() for ch in image):
                raise BundleError(flag, f"{image!r} is not an image reference")
        if not 0 < self.model_server_port < 65536:
            raise BundleError("--model-server-port", f"{self.model_server_port} is not in 1..65535")
        if self.replicas < 1:
            raise BundleError("--replicas", f"{self.replicas} must be at least 1")

    @property
    def selector(self) -> dict[str, str]:
        """Labels the InferencePool selects model-server pods by."""
        return {"app": self.pool_name}

    @property
    def picker_host(self) -> str:
        return f"{PICKER_NAME}.{self.namespace}.svc"


@dataclass(frozen=True, slots=True)
class BundleContext:
    """What every renderer reads: the options and the validated config's text."""

    options: BundleOptions
    config_text: str
    config_name: str


@dataclass(frozen=True, slots=True)
class RenderedFile:
    text: str
    executable: bool = False


Renderer = Callable[[BundleContext], Mapping[str, RenderedFile]]

"""In-tree plugins and the registry that names them."""

from epp.plugins.registry import default_registry

__all__ = ["default_registry"]

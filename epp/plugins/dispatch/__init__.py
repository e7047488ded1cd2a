"""Dispatch accounting as a pre-request plugin (see ``epp.datalayer.dispatch``)."""

__all__: list[str] = []

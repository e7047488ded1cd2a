"""Routing state shared between picker replicas through Redis (``--state-store``).

``address`` parses the URL, ``store`` holds the connection and its health, ``codec`` is
the prefix records' wire form, ``prefix_sync`` and ``load_sync`` replicate the prefix index
and the in-flight load, and ``replicator`` ties them into one background work item.
"""

from epp.sharedstate.replicator import SharedState, SharedStateSettings, build_shared_state, default_replica_id

__all__ = ["SharedState", "SharedStateSettings", "build_shared_state", "default_replica_id"]

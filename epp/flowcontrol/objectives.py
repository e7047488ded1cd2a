"""InferenceObjectives without Kubernetes: a watched YAML file of the CRD's documents.

A request names its objective in ``x-gateway-inference-objective``; the objective's
``spec.priority`` is the request's priority band. In a cluster the Go EPP reads the
``InferenceObjective`` custom resources; standalone, ``--objectives-file`` holds the same
documents, so a manifest works unchanged in both::

    apiVersion: inference.networking.x-k8s.io/v1alpha2
    kind: InferenceObjective
    metadata:
      name: critical-chat
    spec:
      priority: 10          # optional: unset means 0, as in the Go EPP
      poolRef:
        name: my-pool       # required by the CRD

The file may be a YAML stream of such documents (``---`` between them), a top-level list
of them, or a ``kind: List`` (or ``InferenceObjectiveList``) with ``items``, as
``kubectl get -o yaml`` writes. Decoding is strict like the API server's: an unknown
field, another kind or apiVersion, a priority that is not an integer or a name used twice
fails with a ``ConfigError`` naming the document and field. ``status`` is accepted and
ignored. An objective name the file does not define means priority 0, as in Go.

The file is watched like the pool file (``epp.datalayer.poolsource``): replace it by
write-then-rename; a change is applied once two polls saw the same content, and a file
that fails to parse is never applied (the last good objectives stay, the error is logged).
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import yaml

from epp.datalayer.filewatch import FileWatcher
from epp.errors import ConfigError, bounded_repr
from epp.yamlsafe import load as load_yaml
from epp.yamlsafe import shown

__all__ = [
    "API_VERSION",
    "KIND",
    "ObjectiveStore",
    "ObjectivesFileWatcher",
    "parse_objectives",
]

log = logging.getLogger(__name__)

API_VERSION = "inference.networking.x-k8s.io/v1alpha2"
KIND = "InferenceObjective"
DEFAULT_PRIORITY = 0
_LIST_KINDS = {"List": "v1", "InferenceObjectiveList": API_VERSION}

_OBJECT_KEYS = frozenset({"apiVersion", "kind", "metadata", "spec", "status"})
_LIST_KEYS = frozenset({"apiVersion", "kind", "metadata", "items"})
# Every ObjectMeta field, so that ``kubectl get -o yaml`` output loads; only ``name`` is used.
_METADATA_KEYS = frozenset({
    "name", "generateName", "namespace", "selfLink", "uid", "resourceVersion", "generation", "creationTimestamp",
    "deletionTimestamp", "deletionGracePeriodSeconds", "labels", "annotations", "ownerReferences", "finalizers",
    "managedFields",
})
_SPEC_KEYS = frozenset({"priority", "poolRef"})
_POOL_REF_KEYS = frozenset({"group", "kind", "name"})
# Kubernetes object names are DNS subdomains (RFC 1123).
_NAME = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")
_MAX_NAME = 253
# spec.priority is a Go int (64 bits).
_INT64 = range(-(2**63), 2**63)


def _split_stream(text: str) -> list[str]:
    """The documents of a YAML stream, as separate texts, each for the bounded loader.

    Only the scanner runs here (tokens, no nodes, no alias expansion), so a hostile file
    costs linear time; the bounded loader then refuses whatever it must, per document.
    A document's directives (``%YAML``) go with it.
    """
    starts = [0]
    directive_at: int | None = None
    try:
        for token in yaml.scan(text, Loader=yaml.SafeLoader):
            if isinstance(token, yaml.DirectiveToken) and directive_at is None:
                directive_at = token.start_mark.index
            elif isinstance(token, yaml.DocumentStartToken):
                start = token.start_mark.index if directive_at is None else directive_at
                directive_at = None
                if start > 0:
                    starts.append(start)
    except yaml.YAMLError:
        return [text]  # the loader reports the syntax error, with its position
    return [text[start:end] for start, end in zip(starts, [*starts[1:], len(text)], strict=True)]


def _key_name(key: Any) -> str:
    return key if isinstance(key, str) and 0 < len(key) <= 100 else bounded_repr(key)


def _mapping(value: Any, where: str, allowed: frozenset[str], what: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(where, f"expected {what} (a mapping)", shown(value))
    unknown = [key for key in value if key not in allowed]
    if unknown:
        raise ConfigError(f"{where}.{_key_name(unknown[0])}", f"unknown field; allowed: {sorted(allowed)}")
    return value


def _expect(doc: Mapping[str, Any], where: str, field_name: str, expected: str) -> None:
    if doc.get(field_name) != expected:
        raise ConfigError(f"{where}.{field_name}", f"must be {expected!r}", shown(doc.get(field_name)))


def _name(value: Any, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(where, "is required: a non-empty string", shown(value))
    if len(value) > _MAX_NAME or not _NAME.fullmatch(value):
        raise ConfigError(where, "must be a DNS subdomain: lowercase letters, digits, '-' and '.', "
                                 f"at most {_MAX_NAME} characters", shown(value))
    return value


def _priority(spec: Mapping[str, Any], where: str) -> int:
    value = spec.get("priority")
    if value is None:
        return DEFAULT_PRIORITY
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{where}.priority", "must be an integer", shown(value))
    if value not in _INT64:
        raise ConfigError(f"{where}.priority", "must fit in 64 bits", shown(value))
    return value


def _pool_ref(value: Any, where: str) -> str:
    ref = _mapping(value, where, _POOL_REF_KEYS, "a pool reference")
    for key in ("group", "kind"):
        if key in ref and not isinstance(ref[key], str):
            raise ConfigError(f"{where}.{key}", "must be a string", shown(ref[key]))
    if not isinstance(ref.get("name"), str) or not ref["name"]:
        raise ConfigError(f"{where}.name", "is required: the InferencePool's name", shown(ref.get("name")))
    return str(ref["name"])


def _objective(doc: Any, where: str) -> tuple[str, int, str]:
    """One InferenceObjective document: (name, priority, pool name)."""
    doc = _mapping(doc, where, _OBJECT_KEYS, "an InferenceObjective")
    _expect(doc, where, "apiVersion", API_VERSION)
    _expect(doc, where, "kind", KIND)
    if "metadata" not in doc:
        raise ConfigError(f"{where}.metadata", "is required (metadata.name names the objective)")
    metadata = _mapping(doc["metadata"], f"{where}.metadata", _METADATA_KEYS, "object metadata")
    name = _name(metadata.get("name"), f"{where}.metadata.name")
    if "spec" not in doc:
        raise ConfigError(f"{where}.spec", "is required (spec.poolRef names the pool)")
    spec = _mapping(doc["spec"], f"{where}.spec", _SPEC_KEYS, "an InferenceObjective spec")
    priority = _priority(spec, f"{where}.spec")
    if "poolRef" not in spec:
        raise ConfigError(f"{where}.spec.poolRef", "is required")
    return name, priority, _pool_ref(spec["poolRef"], f"{where}.spec.poolRef")


def _objective_documents(doc: Any, where: str) -> Iterator[tuple[Any, str]]:
    """Unwrap a top-level list or a ``kind: List`` into its documents, each with its path."""
    if isinstance(doc, list):
        for i, item in enumerate(doc):
            yield item, f"{where}[{i}]"
    elif isinstance(doc, Mapping) and isinstance(doc.get("kind"), str) and doc["kind"] in _LIST_KINDS:
        doc = _mapping(doc, where, _LIST_KEYS, "a List")
        _expect(doc, where, "apiVersion", _LIST_KINDS[doc["kind"]])
        items = doc.get("items")
        if not isinstance(items, list):
            raise ConfigError(f"{where}.items", "expected a list of InferenceObjective documents", shown(items))
        for i, item in enumerate(items):
            yield item, f"{where}.items[{i}]"
    else:
        yield doc, where


def parse_objectives(text: str, source: str = "objectives file", *, pool_name: str | None = None) -> dict[str, int]:
    """Objective name → priority from the file's text; every failure is a ``ConfigError``.

    Paths in errors are ``<source>[<document>]``, then ``[<i>]`` or ``.items[<i>]`` inside
    a list. With ``pool_name``, objectives whose ``poolRef`` names another pool are left
    out, as the Go EPP ignores objectives of other pools (they are still validated).
    """
    priorities: dict[str, int] = {}
    first_seen: dict[str, str] = {}
    for d, part in enumerate(_split_stream(text)):
        where = f"{source}[{d}]"
        doc = load_yaml(part, where)
        if doc is None:
            continue  # an empty document (a comment, a stray '---')
        for item, item_where in _objective_documents(doc, where):
            name, priority, pool = _objective(item, item_where)
            if name in first_seen:
                raise ConfigError(f"{item_where}.metadata.name", f"duplicate objective name {bounded_repr(name)} "
                                                                 f"(first at {first_seen[name]})")
            first_seen[name] = item_where
            if pool_name is None or pool == pool_name:
                priorities[name] = priority
    return priorities


class ObjectiveStore:
    """The current objectives: name → priority, replaced whole on reload."""

    def __init__(self, priorities: Mapping[str, int] | None = None) -> None:
        self._priorities: dict[str, int] = dict(priorities or {})

    def priority(self, name: str | None) -> int:
        """The objective's priority; 0 for no objective or one the file does not define (as in Go)."""
        if name is None:
            return DEFAULT_PRIORITY
        return self._priorities.get(name, DEFAULT_PRIORITY)

    def replace(self, priorities: Mapping[str, int]) -> None:
        # One reference swap: a reader in another thread sees the old or the new objectives, never a mix.
        self._priorities = dict(priorities)

    def __len__(self) -> int:
        return len(self._priorities)

    def snapshot(self) -> dict[str, int]:
        return dict(self._priorities)


class ObjectivesFileWatcher(FileWatcher[dict[str, int]]):
    """Keeps an ``ObjectiveStore`` equal to ``--objectives-file``'s last good contents."""

    def __init__(self, path: Path, store: ObjectiveStore, poll_interval: float = 0.25, *,
                 pool_name: str | None = None) -> None:
        self.store = store
        super().__init__(path, "--objectives-file",
                         lambda text: parse_objectives(text, str(path), pool_name=pool_name), store.replace,
                         lambda: f"{len(store)} objectives", poll_interval)

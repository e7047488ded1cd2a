"""Precise prefix-cache routing from the model servers' own KV-cache events (issue 11).

``keys`` is the contract between the event side (what each replica holds) and the request
side (which blocks a prompt needs): both chain the same content keys over token ids, so
the index never depends on reproducing a model server's internal block hash.
"""

__all__: list[str] = []

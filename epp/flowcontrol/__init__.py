"""Flow control: the admission queue between parsing and scheduling (director step 3).

``types`` holds the contracts every part shares; policies, saturation detectors, the
workload registry and the controller each live in a module of their own.
"""

__all__: list[str] = []

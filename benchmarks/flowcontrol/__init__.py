"""Flow-control benchmark: high-priority TTFT, shedding, fairness and queue CPU cost under overload."""

"""``epp sim``: start one or more simulated vLLM/SGLang replicas in this process.

Flags follow vLLM's names where vLLM has them; defaults are ``SimConfig``'s (one source of
truth). ``--replicas N`` starts N replicas on consecutive ports from ``--base-port`` (or
``--port``); port 0 gives each replica an ephemeral port. ``--speed`` takes one value or one
per replica (``--speed 1,1,2``). Heavy imports (aiohttp, uvloop) wait until the command runs.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from epp.sim.config import ConfigError, EngineKind, LoraModule, SimConfig
from epp.sim.gauge_values import parse_custom_gauge
from epp.sim.kv_events_config import parse_kv_events

__all__ = ["add_parser", "configs_from_args", "run"]

# SimConfig's defaults, the single source of the CLI defaults.
_DEFAULTS: Mapping[str, Any] = MappingProxyType({
    f.name: f.default for f in dataclasses.fields(SimConfig) if f.default is not dataclasses.MISSING
})


def _speeds(text: str) -> list[float]:
    try:
        values = [float(part) for part in text.split(",")]
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"expected a number or a comma list, got {text!r}") from exc
    if any(v <= 0 for v in values):
        raise argparse.ArgumentTypeError("speeds must be > 0")
    return values


def add_parser(subparsers: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    """Register the ``sim`` subcommand and its flags on the top-level ``epp`` parser."""
    p = subparsers.add_parser(
        "sim",
        help="run simulated vLLM/SGLang model servers (for tests and benchmarks)",
        description=__doc__,
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    d = _DEFAULTS
    net = p.add_argument_group("model and network")
    net.add_argument("--model", default=d["model"], help="model name the server pretends to serve")
    net.add_argument("--served-model-name", nargs="+", default=[],
                     help="names clients use; empty means --model")
    net.add_argument("--host", default=d["host"], help="address to bind (any loopback address works)")
    net.add_argument("--port", type=int, default=d["port"], help="port of the first replica (0: ephemeral)")
    net.add_argument("--base-port", type=int, default=None, help="same as --port, for --replicas")
    net.add_argument("--replicas", type=int, default=1, help="replicas in this process, on consecutive ports")
    net.add_argument("--engine", choices=[e.value for e in EngineKind], default=d["engine"].value,
                     help="whose metric names and info endpoints to imitate")

    eng = p.add_argument_group("engine (vLLM flags)")
    eng.add_argument("--max-num-seqs", type=int, default=d["max_num_seqs"], help="running requests at most")
    eng.add_argument("--max-num-batched-tokens", type=int, default=d["max_num_batched_tokens"],
                     help="token budget of one step (chunked prefill)")
    eng.add_argument("--max-model-len", type=int, default=d["max_model_len"], help="prompt + output limit")
    eng.add_argument("--block-size", type=int, default=d["block_size"], help="tokens per KV block")
    eng.add_argument("--num-gpu-blocks", "--num-gpu-blocks-override", dest="num_gpu_blocks", type=int,
                     default=d["num_gpu_blocks"], help="KV cache size in blocks")
    eng.add_argument("--enable-prefix-caching", action=argparse.BooleanOptionalAction,
                     default=d["enable_prefix_caching"], help="hash-chained prefix caching")
    eng.add_argument("--lora-modules", nargs="+", default=[], metavar="NAME=PATH",
                     help="LoRA adapters known at start")
    eng.add_argument("--max-loras", type=int, default=d["max_loras"], help="adapters resident at once")
    eng.add_argument("--enable-lora", action="store_true",
                     help="serve LoRA adapters (implied by --lora-modules) and emit vllm:lora_requests_info")
    eng.add_argument("--disjoint-lora-lists", action="store_true",
                     help="vllm:lora_requests_info as vLLM before 0.32 wrote it: running and waiting adapters apart")
    eng.add_argument("--seed", type=int, default=d["seed"], help="seed of ids, outputs and failures")
    eng.add_argument("--stream-interval", type=int, default=d["stream_interval"],
                     help="tokens per streamed chunk")
    eng.add_argument("--default-max-tokens", type=int, default=d["default_max_tokens"],
                     help="output length of requests that set no max_tokens")

    timing = p.add_argument_group("timing (simulated seconds; see docs/simulator.md)")
    timing.add_argument("--step-base", type=float, default=d["step_base"], help="fixed cost of every step")
    timing.add_argument("--prefill-per-token", type=float, default=d["prefill_per_token"],
                        help="cost per uncached prompt token")
    timing.add_argument("--prefill-attn-per-pair", type=float, default=d["prefill_attn_per_pair"],
                        help="attention cost per (new token, context token) pair")
    timing.add_argument("--decode-per-seq", type=float, default=d["decode_per_seq"],
                        help="cost per decoding sequence in a step")
    timing.add_argument("--decode-per-ctx-token", type=float, default=d["decode_per_ctx_token"],
                        help="cost per context token of decoding sequences")
    timing.add_argument("--lora-load-time", type=float, default=d["lora_load_time"],
                        help="time to bring an adapter into a GPU slot")
    timing.add_argument("--time-scale", type=float, default=d["time_scale"],
                        help="wall seconds per simulated second (0.1 = ten times faster)")
    timing.add_argument("--speed", type=_speeds, default=[d["speed"]], metavar="SPEED[,SPEED...]",
                        help="latency multiplier, one value or one per replica (2.0 = twice as slow)")

    faults = p.add_argument_group("failure injection")
    faults.add_argument("--fail-rate", type=float, default=d["fail_rate"],
                        help="probability of answering an inference request with a 500")
    faults.add_argument("--metrics-delay", type=float, default=d["metrics_delay"],
                        help="wall seconds added before every /metrics answer")

    custom = p.add_argument_group("custom metrics")
    custom.add_argument("--custom-gauge", action="append", default=[], metavar="NAME=VALUE",
                        help="add gauge NAME{model_name=...} to /metrics (repeatable); POST /sim/gauge changes it")
    kv = p.add_argument_group("KV-cache events and tokenizer (see docs/simulator.md)")
    kv.add_argument("--kv-events", default=None, metavar="tcp://HOST:PORT",
                    help="publish vLLM KV-cache events on a ZeroMQ PUB socket bound here; "
                         "replica i binds PORT+i")
    kv.add_argument("--kv-events-config", default=None, metavar="JSON",
                    help="vLLM's KVEventsConfig JSON (enable_kv_cache_events, publisher, endpoint, "
                         "replay_endpoint, buffer_steps, hwm, max_queue_size, topic)")
    kv.add_argument("--tokenizer", default=None, metavar="PATH",
                    help="a Hugging Face tokenizer.json to tokenize prompts with (as the picker does)")
    p.set_defaults(func=run)


def configs_from_args(args: argparse.Namespace) -> list[SimConfig]:
    """One ``SimConfig`` per replica.

    Raises:
        ConfigError: an impossible value or combination of flags.
    """
    replicas = args.replicas
    if replicas < 1:
        raise ConfigError("replicas", "must be >= 1", replicas)
    speeds = args.speed
    if len(speeds) not in (1, replicas):
        raise ConfigError("speed", f"give one value or {replicas} (one per replica)", speeds)
    base = args.base_port if args.base_port is not None else args.port
    tokenizer = getattr(args, "tokenizer", None)
    if tokenizer is not None and not os.path.isfile(tokenizer):
        raise ConfigError("tokenizer", "no such file", tokenizer)
    common = {
        "model": args.model,
        "served_model_name": tuple(args.served_model_name),
        "host": args.host,
        "engine": EngineKind(args.engine),
        "lora_modules": tuple(LoraModule.parse(m) for m in args.lora_modules),
        "custom_gauges": tuple(parse_custom_gauge(g) for g in args.custom_gauge),
        "kv_events": parse_kv_events(getattr(args, "kv_events", None), getattr(args, "kv_events_config", None)),
        "tokenizer_path": tokenizer,
        **{name: getattr(args, name) for name in (
            "max_num_seqs", "max_num_batched_tokens", "max_model_len", "block_size", "num_gpu_blocks",
            "enable_prefix_caching", "max_loras", "enable_lora", "disjoint_lora_lists", "seed", "stream_interval",
            "default_max_tokens",
            "step_base", "prefill_per_token", "prefill_attn_per_pair", "decode_per_seq",
            "decode_per_ctx_token", "lora_load_time", "time_scale", "fail_rate", "metrics_delay")},
    }
    return [
        SimConfig(**common, port=base + i if base else 0, replica_index=i,
                  speed=speeds[i] if len(speeds) > 1 else speeds[0])
        for i in range(replicas)
    ]


def run(args: argparse.Namespace) -> int:
    """Entry point of ``epp sim``: serve until SIGINT/SIGTERM.

    Returns:
        0 after a clean stop, 1 if an address cannot be bound, 2 for impossible flags.
    """
    import asyncio
    import sys

    from epp.sim.replicas import serve_replicas

    try:
        configs = configs_from_args(args)
    except ConfigError as exc:
        print(f"epp sim: {exc}", file=sys.stderr)
        return 2
    try:
        import uvloop

        loop_factory = uvloop.new_event_loop
    except ImportError:  # pragma: no cover - uvloop is a dependency on Linux
        loop_factory = None
    try:
        with asyncio.Runner(loop_factory=loop_factory) as runner:
            return runner.run(serve_replicas(configs))
    except OSError as exc:
        print(f"epp sim: cannot listen: {exc}", file=sys.stderr)
        return 1
    except ConfigError as exc:  # a custom gauge named like a metric the page already has
        print(f"epp sim: {exc}", file=sys.stderr)
        return 2

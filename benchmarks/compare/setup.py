"""Install the peer routers into their own virtual environment: ``python -m benchmarks.compare.setup``.

The peers (sglang-router, vllm-router) are Rust wheels from PyPI with their own
dependencies, so they live in ``benchmarks/results/peers-venv`` (git-ignored), never in
the project's venv. Each package is installed on its own, so one failing does not hide the
other; the outcome of each install is written to ``install.json`` beside the venv and is
what the harness quotes when a peer is missing.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import venv
from collections.abc import Sequence
from pathlib import Path

__all__ = ["PEER_PACKAGES", "VENV", "install", "install_log", "peer_executable"]

VENV = Path(__file__).resolve().parents[1] / "results" / "peers-venv"
# package name on PyPI -> console script it provides
PEER_PACKAGES = {"sglang-router": "sglang-router", "vllm-router": "vllm-router"}


def _install_log_path(venv_dir: Path) -> Path:
    return venv_dir / "install.json"


def install_log(venv_dir: Path = VENV) -> dict[str, str]:
    """Package -> ``"ok <version>"`` or the reason its install failed (empty before set-up ran)."""
    try:
        data = json.loads(_install_log_path(venv_dir).read_text())
    except (FileNotFoundError, ValueError):
        return {}
    return {str(k): str(v) for k, v in data.items()}


def peer_executable(package: str, venv_dir: Path = VENV) -> tuple[Path | None, str]:
    """The peer's console script, or ``None`` and why it is missing."""
    script = venv_dir / "bin" / PEER_PACKAGES[package]
    if script.exists():
        return script, ""
    if not venv_dir.exists():
        return None, f"{package} not installed: run `python -m benchmarks.compare.setup` (no venv at {venv_dir})"
    reason = install_log(venv_dir).get(package, "set-up has not installed it")
    return None, f"{package} not installed in {venv_dir}: {reason}"


def _version(python: Path, package: str) -> str:
    out = subprocess.run([str(python), "-m", "pip", "show", package], capture_output=True, text=True, check=False)
    for line in out.stdout.splitlines():
        if line.startswith("Version:"):
            return line.split(":", 1)[1].strip()
    return "?"


def install(packages: Sequence[str], venv_dir: Path = VENV, timeout: float = 900.0, upgrade: bool = False
            ) -> dict[str, str]:
    """Install each package unless it is there already (``upgrade``: ask PyPI for a newer one anyway)."""
    if not (venv_dir / "bin" / "python").exists():
        venv.EnvBuilder(with_pip=True, clear=False).create(venv_dir)
    python = venv_dir / "bin" / "python"
    results = install_log(venv_dir)
    for package in packages:
        if not upgrade and peer_executable(package, venv_dir)[0] is not None:
            results[package] = f"ok {_version(python, package)}"
            print(f"  {package}: already installed ({results[package]}; --upgrade to update)", flush=True)
            continue
        print(f"installing {package} into {venv_dir} ...", flush=True)
        try:
            done = subprocess.run([str(python), "-m", "pip", "install", "--quiet", "--upgrade", package],
                                  capture_output=True, text=True, timeout=timeout, check=False)
            failed = done.returncode != 0
            # pip's last ERROR line names the cause; its warnings about index locations do not
            errors = [line for line in done.stderr.splitlines() if line.startswith("ERROR")]
            detail = (errors or done.stderr.strip().splitlines() or ["no output"])[-1]
        except subprocess.TimeoutExpired:
            failed, detail = True, f"pip timed out after {timeout:g}s"
        results[package] = f"install failed: {detail}" if failed else f"ok {_version(python, package)}"
        print(f"  {package}: {results[package]}", flush=True)
    _install_log_path(venv_dir).write_text(json.dumps(results, indent=2))
    return results


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--venv", type=Path, default=VENV)
    parser.add_argument("--upgrade", action="store_true", help="reinstall from PyPI even when present")
    parser.add_argument("packages", nargs="*", default=list(PEER_PACKAGES), help=", ".join(PEER_PACKAGES))
    args = parser.parse_args(argv)
    unknown = set(args.packages) - set(PEER_PACKAGES)
    if unknown:
        parser.error(f"unknown peers {sorted(unknown)}; choose from {list(PEER_PACKAGES)}")
    results = install(args.packages, args.venv, upgrade=args.upgrade)
    return 0 if all(r.startswith("ok") for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

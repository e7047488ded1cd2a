"""``epp bundle``: render everything needed to deploy one ``EndpointPickerConfig``.

The config is loaded and validated first (a bad config fails naming its field, before any
file is written). Then the renderers run in parallel, each returning files by relative
path; if any fails, the bundle fails naming it and nothing is left at the output path.
The files are written to a temporary directory beside the output, ``checksums.txt``
(``sha256sum -c`` format, covering every other file) is written last, and the directory
is renamed into place.

Renderers (``RENDERERS``; the structured ones in ``epp.ops.bundle_manifests``, scripts
and README in ``epp.ops.bundle_text``, the shared types in ``epp.ops.bundle_model``):

- ``envoy``: ``envoy/envoy.yaml``, the project's bootstrap (config/envoy.yaml) listening
  on 0.0.0.0:8081 and calling the picker Service ``epp.<namespace>.svc:9002``; model
  servers are reached through the ORIGINAL_DST cluster, at the address the picker chose.
- ``kubernetes``: ``kubernetes/*.yaml``: ServiceAccount + RBAC, the config and pool-file
  ConfigMaps, the picker Deployment and Service, an Envoy Deployment running the
  bootstrap, and an InferencePool + HTTPRoute for Gateway API Inference Extension
  gateways; ``examples/model-server.yaml``, a vLLM Deployment the pool selects.
- ``helm``: ``helm/values.yaml`` for the chart in ``deploy/helm/epp``.
- ``scripts``: ``scripts/install.sh``, ``scripts/uninstall.sh``, ``scripts/sync-pool.sh``.
- ``readme``: ``README.md``.

The picker has no Kubernetes pool source: it reads its endpoints from a pool file, mounted
from the ConfigMap ``epp-pool``; ``scripts/sync-pool.sh`` writes the IPs of the running
pods the InferencePool selects into it (run it again, or from a CronJob, when they change).

``python -m epp.ops.bundle --write-deploy`` regenerates ``deploy/manifests/`` and the
chart's ``values.yaml`` from ``config/default.yaml`` with the default options.
"""

from __future__ import annotations

import argparse
import hashlib
import random
import shutil
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

from epp.ops.bundle_manifests import picker_args, render_envoy, render_helm, render_kubernetes
from epp.ops.bundle_model import (
    CHECKSUMS,
    DEFAULT_ENVOY_IMAGE,
    DEFAULT_IMAGE,
    BundleContext,
    BundleError,
    BundleOptions,
    RenderedFile,
    Renderer,
)
from epp.ops.bundle_text import render_readme, render_scripts

__all__ = [
    "CHECKSUMS",
    "DEFAULT_ENVOY_IMAGE",
    "DEFAULT_IMAGE",
    "RENDERERS",
    "BundleContext",
    "BundleError",
    "BundleOptions",
    "DeployLayout",
    "RenderedFile",
    "Renderer",
    "deploy_files",
    "load_bundle_context",
    "picker_args",
    "render_files",
    "write_bundle",
    "write_deploy",
]

_REPO_ROOT = Path(__file__).resolve().parents[2]


# --------------------------------------------------------------------------- loading


def load_bundle_context(config_path: Path, options: BundleOptions) -> BundleContext:
    """Validate the options and load the config as ``epp serve`` would; errors name the field."""
    from epp.config.loader import load_config
    from epp.datalayer.pool import EndpointPool
    from epp.errors import ConfigError
    from epp.framework.plugin import Handle
    from epp.plugins import default_registry

    options.validate()
    try:
        text = config_path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise BundleError("--config", f"cannot read {config_path}: {exc}") from None
    try:
        load_config(text, default_registry(), Handle(pool=EndpointPool(), rng=random.Random(0)))
    except ConfigError as exc:
        raise BundleError(f"config {config_path}", str(exc)) from None
    return BundleContext(options=options, config_text=text, config_name=config_path.name)


RENDERERS: dict[str, Renderer] = {
    "envoy": render_envoy,
    "kubernetes": render_kubernetes,
    "helm": render_helm,
    "scripts": render_scripts,
    "readme": render_readme,
}


# --------------------------------------------------------------------------- running and writing


def render_files(ctx: BundleContext, renderers: Mapping[str, Renderer] | None = None) -> dict[str, RenderedFile]:
    """Run every renderer in parallel; any failure is a ``BundleError`` naming all that failed."""
    chosen = dict(RENDERERS if renderers is None else renderers)
    with ThreadPoolExecutor(max_workers=max(1, len(chosen)), thread_name_prefix="bundle") as pool:
        futures = {name: pool.submit(fn, ctx) for name, fn in chosen.items()}
    failures: dict[str, str] = {}
    files: dict[str, RenderedFile] = {}
    owner: dict[str, str] = {}
    for name, future in futures.items():
        exc = future.exception()
        if exc is not None:
            failures[name] = f"{type(exc).__name__}: {exc}"
            continue
        result = future.result()
        if not isinstance(result, Mapping) or not all(
                isinstance(p, str) and isinstance(r, RenderedFile) and isinstance(r.text, str)
                for p, r in result.items()):
            failures[name] = "returned something other than {relative path: RenderedFile(text)}"
            continue
        for path, rendered in result.items():
            if path == CHECKSUMS or path in owner or Path(path).is_absolute() or ".." in Path(path).parts:
                failures[name] = f"wrote {path!r}, which is reserved, outside the bundle or already written"
                continue
            owner[path] = name
            files[path] = rendered
    if failures:
        where = "renderer " + ", ".join(sorted(failures))
        raise BundleError(where, "; ".join(f"{name}: {reason}" for name, reason in sorted(failures.items())))
    return files


def checksums_text(root: Path, paths: Iterable[str]) -> str:
    lines = [f"{hashlib.sha256((root / p).read_bytes()).hexdigest()}  {p}" for p in sorted(paths)]
    return "\n".join(lines) + "\n"


def write_bundle(config_path: Path, output: Path, options: BundleOptions, *, force: bool = False,
                 renderers: Mapping[str, Renderer] | None = None) -> list[str]:
    """Render the bundle into ``output``; returns the relative paths written (checksums last).

    Nothing is written when the config, the options or a renderer fails; an existing
    non-empty ``output`` is only replaced with ``force``.
    """
    ctx = load_bundle_context(config_path, options)
    output = output.resolve()
    if output.exists() and not output.is_dir():
        raise BundleError("--output", f"{output} exists and is not a directory")
    if output.is_dir() and any(output.iterdir()) and not force:
        raise BundleError("--output", f"{output} is not empty (pass --force to replace it)")
    files = render_files(ctx, renderers)
    try:
        output.parent.mkdir(parents=True, exist_ok=True)
        staging = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".partial", dir=output.parent))
    except OSError as exc:
        raise BundleError("--output", f"cannot create {output}: {exc}") from None
    try:
        for rel, rendered in files.items():
            target = staging / rel
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(rendered.text)
            target.chmod(0o755 if rendered.executable else 0o644)
        (staging / CHECKSUMS).write_text(checksums_text(staging, files))
        (staging / CHECKSUMS).chmod(0o644)
        for directory in (staging, *(p for p in staging.rglob("*") if p.is_dir())):
            directory.chmod(0o755)
        _swap_into_place(staging, output)
    except OSError as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise BundleError("--output", f"cannot write {output}: {exc}") from None
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise
    return [*sorted(files), CHECKSUMS]


def _swap_into_place(staging: Path, output: Path) -> None:
    if not output.exists():
        staging.rename(output)
        return
    retired = Path(tempfile.mkdtemp(prefix=f".{output.name}.", suffix=".old", dir=output.parent))
    retired.rmdir()
    output.rename(retired)
    try:
        staging.rename(output)
    except BaseException:
        retired.rename(output)
        raise
    shutil.rmtree(retired, ignore_errors=True)


# --------------------------------------------------------------------------- deploy/


@dataclass(frozen=True, slots=True)
class DeployLayout:
    """Where ``--write-deploy`` puts the default bundle's files in the source tree."""

    root: Path = _REPO_ROOT

    @property
    def config(self) -> Path:
        return self.root / "config" / "default.yaml"

    @property
    def manifests(self) -> Path:
        return self.root / "deploy" / "manifests"

    @property
    def chart_values(self) -> Path:
        return self.root / "deploy" / "helm" / "epp" / "values.yaml"


def deploy_files(layout: DeployLayout | None = None) -> dict[Path, str]:
    """deploy/ files as the default bundle renders them: path → text."""
    layout = layout or DeployLayout()
    ctx = load_bundle_context(layout.config, BundleOptions())
    files = render_files(ctx, {"kubernetes": render_kubernetes, "helm": render_helm})
    out: dict[Path, str] = {}
    for rel, rendered in files.items():
        if rel == "helm/values.yaml":
            out[layout.chart_values] = rendered.text
        else:
            out[layout.manifests / Path(rel).name] = rendered.text
    return out


def write_deploy(layout: DeployLayout | None = None) -> list[Path]:
    written = []
    for path, text in deploy_files(layout).items():
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
        written.append(path)
    return written


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m epp.ops.bundle",
                                     description="Regenerate deploy/manifests and the chart's values.yaml.")
    parser.add_argument("--write-deploy", action="store_true", required=True,
                        help="write deploy/ from config/default.yaml with the default bundle options")
    parser.parse_args(argv)
    for path in write_deploy():
        print(path.relative_to(_REPO_ROOT))
    return 0


if __name__ == "__main__":  # pragma: no cover - a maintenance command
    sys.exit(main())

"""Plugin discovery (pluggy + the ``deepscope`` entry-point group) and the metric/dataset registry.

Built-in metrics arrive through the same entry points as third-party ones. ``DEEPSCOPE_PLUGINS``
(comma-separated entry-point names or distribution names) limits which load; a plugin that
fails to import is recorded in ``errors`` and the server starts without it.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass, field
from importlib import metadata
from types import ModuleType

import pluggy

from . import plugin_api
from .errors import unknown
from .plugin_api import Dataset, Metric, Needs

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class MetricEntry:
    cls: type[Metric]
    plugin: str
    version: str


@dataclass
class Registry:
    """What the loaded plugins registered."""

    metrics: dict[str, MetricEntry] = field(default_factory=dict)
    datasets: dict[str, Dataset] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    plugin_versions: dict[str, str] = field(default_factory=dict)

    def metric(self, name: str) -> MetricEntry:
        try:
            return self.metrics[name]
        except KeyError:
            raise unknown("metric", name, self.metrics, hint="; list them with ListMetrics / `deepscope metrics`",
                          field="metrics") from None

    def dataset(self, name: str) -> Dataset:
        try:
            return self.datasets[name]
        except KeyError:
            valid = ", ".join(sorted(self.datasets)) or "none"
            raise unknown("dataset", name, self.datasets, hint=f"; available: {valid}", field="dataset") from None

    def expand(self, patterns: list[str]) -> list[str]:
        """Metric names from names, ``family.*`` globs or ``all``."""
        import fnmatch

        names: list[str] = []
        for pattern in patterns:
            hits = sorted(self.metrics) if pattern == "all" else sorted(fnmatch.filter(self.metrics, pattern))
            if not hits:
                raise unknown("metric", pattern, self.metrics, what="matches no metric", field="metrics")
            names += [h for h in hits if h not in names]
        return names


def _allowed(entry_point: metadata.EntryPoint, allow: set[str] | None) -> bool:
    if allow is None:
        return True
    dist = entry_point.dist.name if entry_point.dist else ""
    return entry_point.name in allow or dist in allow


def load_registry(
    use_entry_points: bool = True, allow: set[str] | None = None, extra_plugins: list[ModuleType | object] = ()
) -> Registry:
    """Discover plugins and collect their metrics and datasets.

    ``allow`` defaults to ``DEEPSCOPE_PLUGINS`` when set. ``extra_plugins`` are registered
    directly (tests, embedding applications).
    """
    if allow is None and os.environ.get("DEEPSCOPE_PLUGINS"):
        allow = {p.strip() for p in os.environ["DEEPSCOPE_PLUGINS"].split(",") if p.strip()}
    pm = pluggy.PluginManager(plugin_api.PROJECT)
    pm.add_hookspecs(plugin_api.HookSpecs)
    registry = Registry()
    sources: dict[int, tuple[str, str]] = {}
    if use_entry_points:
        for ep in metadata.entry_points(group=plugin_api.ENTRY_POINT_GROUP):
            if not _allowed(ep, allow):
                continue
            dist_name = ep.dist.name if ep.dist else ep.name
            version = ep.dist.version if ep.dist else "unknown"
            try:
                module = ep.load()
                pm.register(module, name=f"{dist_name}:{ep.name}")
            except Exception as exc:  # a broken plugin must not stop the server
                registry.errors.append(f"plugin '{ep.name}' ({dist_name}) failed to load: {type(exc).__name__}: {exc}")
                log.warning(registry.errors[-1])
                continue
            sources[id(module)] = (dist_name, version)
            registry.plugin_versions[dist_name] = version
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        pm.register(plugin, name=name)
        sources[id(plugin)] = (name, "local")
        registry.plugin_versions.setdefault(name, "local")

    for impl in pm.hook.deepscope_register_metrics.get_hookimpls():
        plugin_name, version = sources.get(id(impl.plugin), (impl.plugin_name, "unknown"))

        def register_metric(cls: type[Metric], _p: str = plugin_name, _v: str = version) -> None:
            problem = _check_metric(cls)
            if problem:
                registry.errors.append(f"plugin '{_p}': metric {cls!r} rejected: {problem}")
            elif cls.name in registry.metrics:
                registry.errors.append(
                    f"plugin '{_p}': metric '{cls.name}' already registered by '{registry.metrics[cls.name].plugin}'"
                )
            else:
                registry.metrics[cls.name] = MetricEntry(cls, _p, _v)

        _call_hook(impl, registry, plugin_name, register_metric)

    for impl in pm.hook.deepscope_register_datasets.get_hookimpls():
        plugin_name, _ = sources.get(id(impl.plugin), (impl.plugin_name, "unknown"))
        _call_hook(impl, registry, plugin_name, lambda ds: registry.datasets.__setitem__(ds.name, ds))
    return registry


def _call_hook(impl: pluggy.HookImpl, registry: Registry, plugin_name: str, register: object) -> None:
    try:
        impl.function(register=register)
    except Exception as exc:
        registry.errors.append(f"plugin '{plugin_name}' hook {impl.function.__name__} failed: {type(exc).__name__}: {exc}")
        log.warning(registry.errors[-1])


def _check_metric(cls: object) -> str:
    """Why a registered class is not a usable metric ('' when it is)."""
    if not (isinstance(cls, type) and issubclass(cls, Metric)):
        return "not a subclass of deepscope_server.plugin_api.Metric"
    name = getattr(cls, "name", "")
    if not isinstance(name, str) or name.count(".") != 1 or not all(name.split(".")):
        return f"name {name!r} must look like 'family.metric'"
    if not getattr(cls, "description", ""):
        return "missing description"
    if not isinstance(cls.needs, Needs):
        return "needs must be a plugin_api.Needs flag"
    return ""

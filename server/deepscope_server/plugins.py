"""Plugin discovery (pluggy + the ``deepscope`` entry-point group) and the metric/dataset registry.

Built-in metrics arrive through the same entry points as third-party ones. ``allow`` (the server's
``--plugins`` / ``DEEPSCOPE_PLUGINS``: entry-point or distribution names) limits which load; a
plugin that fails to import is recorded in ``errors`` and the server starts without it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
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
            raise unknown(
                "metric", name, self.metrics, hint="; list them with ListMetrics / `deepscope metrics`", field="metrics"
            ) from None

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

    ``allow`` (None: every plugin) comes from the server's settings. ``extra_plugins`` are
    registered directly (tests, embedding applications).
    """
    pm = pluggy.PluginManager(plugin_api.PROJECT)
    pm.add_hookspecs(plugin_api.HookSpecs)
    registry = Registry()
    provenance: dict[str, tuple[str, str]] = {}  # pluggy name -> (plugin, version)
    candidates: list[tuple[str, object, str, str]] = []
    if use_entry_points:
        for ep in metadata.entry_points(group=plugin_api.ENTRY_POINT_GROUP):
            if not _allowed(ep, allow):
                continue
            dist_name = ep.dist.name if ep.dist else ep.name
            version = ep.dist.version if ep.dist else "unknown"
            try:
                module = ep.load()
            except Exception as exc:  # a broken plugin must not stop the server
                _report(registry, f"plugin '{ep.name}' ({dist_name}) failed to load: {type(exc).__name__}: {exc}")
                continue
            candidates.append((f"{dist_name}:{ep.name}", module, dist_name, version))
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", type(plugin).__name__)
        candidates.append((name, plugin, name, "local"))
    for pm_name, plugin, shown, version in candidates:
        if _register(pm, registry, pm_name, plugin, shown):
            provenance[pm_name] = (shown, version)
            registry.plugin_versions.setdefault(shown, version)
    _reject_unknown_hooks(pm, registry, provenance)

    def register_metric(cls: type[Metric], plugin: str, version: str) -> None:
        problem = _check_metric(cls)
        if problem:
            _report(registry, f"plugin '{plugin}': metric {cls!r} rejected: {problem}")
        elif cls.name in registry.metrics:
            _report(
                registry,
                f"plugin '{plugin}': metric '{cls.name}' already registered by '{registry.metrics[cls.name].plugin}'",
            )
        else:
            registry.metrics[cls.name] = MetricEntry(cls, plugin, version)

    _call_each(pm, "deepscope_register_metrics", registry, provenance, register_metric)
    _call_each(
        pm,
        "deepscope_register_datasets",
        registry,
        provenance,
        lambda ds, plugin, version: registry.datasets.__setitem__(ds.name, ds),
    )
    return registry


def _report(registry: Registry, message: str) -> None:
    registry.errors.append(message)
    log.warning(message)


def _register(pm: pluggy.PluginManager, registry: Registry, pm_name: str, plugin: object, shown: str) -> bool:
    """Register one plugin; pluggy checks its hook signatures against the specs here."""
    try:
        pm.register(plugin, name=pm_name)
    except Exception as exc:  # PluginValidationError (bad hook arguments), duplicate names
        _report(registry, f"plugin '{shown}' rejected: {type(exc).__name__}: {exc}")
        return False
    return True


def _reject_unknown_hooks(pm: pluggy.PluginManager, registry: Registry, provenance: dict[str, tuple[str, str]]) -> None:
    """``check_pending``: a hook implementation with no spec (a misspelled hook name) would register
    nothing and say nothing; report it and unload that plugin instead."""
    while True:
        try:
            pm.check_pending()
            return
        except pluggy.PluginValidationError as exc:
            pm_name = pm.get_name(exc.plugin) or "?"
            shown = provenance.pop(pm_name, (pm_name, ""))[0]
            known = ", ".join(sorted(h for h in dir(plugin_api.HookSpecs) if h.startswith("deepscope_")))
            _report(registry, f"plugin '{shown}' rejected: {exc} (known hooks: {known})")
            pm.unregister(exc.plugin)


def _call_each(
    pm: pluggy.PluginManager,
    hook_name: str,
    registry: Registry,
    provenance: dict[str, tuple[str, str]],
    register: Callable[..., None],
) -> None:
    """Call a registration hook through pluggy once per plugin, so a plugin that raises is recorded
    against its own name and the others still register."""
    everyone = [pm.get_plugin(name) for name in provenance]
    for pm_name, (shown, version) in provenance.items():
        plugin = pm.get_plugin(pm_name)
        caller = pm.subset_hook_caller(hook_name, remove_plugins=[p for p in everyone if p is not plugin])
        try:
            caller(register=lambda obj, _p=shown, _v=version: register(obj, _p, _v))
        except Exception as exc:
            _report(registry, f"plugin '{shown}' hook {hook_name} failed: {type(exc).__name__}: {exc}")


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

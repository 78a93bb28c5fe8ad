"""Write docs/metrics.md from the installed plugins (`python docs/generate_metrics_doc.py`).

The page lists every metric with its status (faithful / reconstructed / extension), what it needs,
its parameters with defaults and its citation, straight from the plugin classes, so it cannot
drift from the code (a test regenerates it and compares).
"""

from __future__ import annotations

import sys
from pathlib import Path

from deepscope_server.convert import needs_names
from deepscope_server.plugins import load_registry

OUT = Path(__file__).resolve().parent / "metrics.md"
HEADER = """# Built-in metrics

Generated from the plugin classes by `docs/generate_metrics_doc.py`; do not edit by hand. What each
metric computes, and why, is in the project's METRICS notes and the papers cited below.
Status: **faithful** follows the paper and the authors' code; **reconstructed** is rebuilt from the
paper's abstract (every choice is a parameter); **extension** goes beyond the papers.
"""


def render() -> str:
    registry = load_registry(allow={"deepscope-metrics"})
    lines = [HEADER]
    family = None
    for name, entry in sorted(registry.metrics.items()):
        cls = entry.cls
        if name.split(".")[0] != family:
            family = name.split(".")[0]
            lines.append(f"\n## {family}\n")
        status = "reconstructed" if cls.reconstructed else "extension" if cls.extension else "faithful"
        lines.append(f"### `{name}` ({status})\n")
        lines.append(f"{cls.description}\n")
        lines.append(
            f"- needs: {', '.join(needs_names(cls.needs))}; layer kinds: "
            f"{', '.join(sorted(cls.layer_kinds)) if cls.layer_kinds else 'any'}"
        )
        if cls.summary_keys:
            lines.append(f"- headline values: {', '.join(f'`{k}`' for k in cls.summary_keys)}")
        if cls.citation:
            lines.append(f"- citation: {cls.citation}")
        if getattr(cls, "method", ""):  # how it is computed: the reconstruction and its assumptions
            lines.append(f"\n{cls.method.strip()}")
        if cls.params:
            lines.append("\n| parameter | type | default | allowed | description |\n| --- | --- | --- | --- | --- |")
            for p in cls.params:
                allowed = (
                    ", ".join(map(str, p.choices))
                    if p.choices
                    else (
                        f"[{'' if p.min is None else p.min}, {'' if p.max is None else p.max}]"
                        if p.min is not None or p.max is not None
                        else ""
                    )
                )
                desc = p.description.replace("|", "\\|")
                lines.append(f"| `{p.name}` | {p.type.__name__} | `{p.default}` | {allowed} | {desc} |")
        lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    OUT.write_text(render())
    print(f"wrote {OUT}", file=sys.stderr)

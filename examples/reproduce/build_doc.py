"""Assemble docs/reproductions.md from the sections the four reproduction scripts wrote.

python examples/reproduce/build_doc.py [--out docs/reproductions]   # after the scripts (make reproduce)
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from common import DEFAULT_OUT

#: Script names in the order of the document.
SCRIPTS = ("la_malfa", "ding", "lin", "janik")

INTRO = """# Reproductions

`make reproduce` runs `examples/reproduce/{la_malfa,ding,lin,janik}.py` and regenerates this page and
the figures in `docs/reproductions/`. Each script trains a small population of MLPs on scikit-learn's
digits (no download) with torch, saves the checkpoints with the exporters' defaults (`torch.onnx.export`
or `torch.export`), uploads them to a deepscope server started by the SDK (`deepscope.Client.embedded()`),
computes the paper's metrics there over the checkpoint series on the 450 held-out images, and writes a
table and a figure. Seeds are fixed; numbers move a little between machines and library versions.

Verdicts are computed by the scripts from the stated criterion (a significance level, a fit quality, a
gap larger than the seed-to-seed spread), not written by hand, so they stay honest when the metrics
change. The papers' own experiments use larger models and datasets; what is tested here is each
paper's qualitative claim as far as a digits MLP can test it. Where deepscope's metric is a
reconstruction (see `docs/metrics.md`), a failed check may say as much about the reconstruction as
about the paper.
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=DEFAULT_OUT)
    args = parser.parse_args()
    sections, timings = [], []
    for name in SCRIPTS:
        md, summary = args.out / f"{name}.md", args.out / f"{name}.json"
        if not md.exists():
            raise SystemExit(f"{md} is missing: run examples/reproduce/{name}.py first (make reproduce runs all)")
        sections.append(md.read_text())
        timings.append(f"| `{name}.py` | {json.loads(summary.read_text())['seconds']:.0f} s |")
    timing = (
        "Wall time of each script in the run that wrote this page (a shared 2-core machine, under "
        "`nice -n 10`):\n\n| script | time |\n|---|---|\n" + "\n".join(timings) + "\n"
    )
    target = args.out.parent / "reproductions.md"
    target.write_text(INTRO + "\n" + timing + "\n" + "\n".join(sections))
    print(f"wrote {target}")


if __name__ == "__main__":
    main()

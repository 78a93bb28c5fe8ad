"""Write docs/models.md, the model compatibility matrix (`python docs/generate_models_doc.py`).

The rows come from the model conformance suite (`tests/models/conformance.py`): every
architecture is built, exported each way and compared with the torch module, so the page says
what was checked, not what was hoped; `tests/models/coverage.py` adds which built-in metric gives a
result on which architecture. `tests/models` fails when the page is stale.
"""

from __future__ import annotations

import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / "docs" / "models.md"


def main() -> None:
    sys.path.insert(0, str(ROOT))
    import torch

    from tests.models import conformance, coverage

    torch.set_num_threads(1)  # the suite's setting: identical numbers, identical page
    with tempfile.TemporaryDirectory() as tmp:
        results = conformance.run_all(Path(tmp))
        OUT.write_text(coverage.document(results, coverage.run_all(Path(tmp))))
    print(f"wrote {OUT}")


if __name__ == "__main__":
    main()

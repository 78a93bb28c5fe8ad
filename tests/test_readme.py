"""The README's Python code blocks run as written, so they stay true.

Doctest-style: each ```python block is executed in a fresh namespace, in a directory holding
the files the README names (``net.onnx``: the bundled MLP; ``step1-3.onnx``: three checkpoints
of it), with ``x`` bound to the user's inputs (digits). The SDK block talks to a real embedded
server, the plugin block registers its metric through the hook as pluggy would.
"""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def python_blocks(section: str) -> list[str]:
    """The ```python blocks under the ``## section`` heading."""
    text = README.read_text()
    body = text.split(f"\n## {section}\n", 1)[1].split("\n## ", 1)[0]
    return re.findall(r"```python\n(.*?)```", body, flags=re.S)


def checkpoints(source: Path, directory: Path) -> None:
    """step1-3.onnx: the model with its initializers scaled, as if saved during training."""
    import onnx
    from onnx import numpy_helper

    for step in (1, 2, 3):
        model = onnx.load(str(source))
        for init in model.graph.initializer:
            array = numpy_helper.to_array(init)
            if array.dtype.kind == "f":
                init.CopyFrom(numpy_helper.from_array(array * (1 + 0.1 * step), init.name))
        onnx.save(model, str(directory / f"step{step}.onnx"))


def test_sdk_block_runs_as_written(zoo_models, tmp_path, monkeypatch):
    from sklearn.datasets import load_digits

    (block,) = python_blocks("Python SDK")
    source = zoo_models["mlp"].paths["onnx"]
    (tmp_path / "net.onnx").write_bytes(source.read_bytes())
    checkpoints(source, tmp_path)
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("DEEPSCOPE_STORE", str(tmp_path / "store"))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    x = (load_digits().data[:32] / 16.0).astype(np.float32)
    namespace = {"x": x}
    try:
        exec(compile(block, str(README), "exec"), namespace)
    finally:
        if "client" in namespace:
            namespace["client"].close()

    acts = namespace["acts"]
    assert set(acts) >= {"fc1", "fc2", "fc3", "act1", "act2"} and acts["fc1"].shape == (32, 32)
    assert np.allclose(acts.layer_inputs["act1"], acts["fc1"], atol=1e-5)  # act1's input is fc1's output
    run = namespace["run"]
    assert run.status == "completed"
    assert {"cnt.node_strength", "cnt.weight_graph", "fractal.box_dimension"} <= set(run.metrics)
    assert run.graph("cnt.weight_graph", "fc1").number_of_edges() > 0
    assert (tmp_path / "report.html").stat().st_size > 1000


def test_plugin_block_registers_its_metric():
    (block,) = python_blocks("Plugins")
    namespace: dict = {}
    exec(compile(block, str(README), "exec"), namespace)
    registered: list[type] = []
    namespace["deepscope_register_metrics"](registered.append)
    assert [m.name for m in registered] == ["mine.mean_activation"]
    # the README's way to test it without a server
    from deepscope_server.model_graph import Layer
    from deepscope_server.testing import run_metric

    result = run_metric(registered[0], [Layer("fc1", "linear", "Gemm")], outputs={"fc1": np.ones((8, 3), np.float32)})
    assert result == {"fc1": {"mean": 0.1}}


@pytest.mark.parametrize("section", ["Python SDK", "Plugins"])
def test_every_python_block_is_covered(section):
    assert len(python_blocks(section)) == 1
    other = [s for s in re.findall(r"\n## (.+)\n", README.read_text()) if s not in ("Python SDK", "Plugins")]
    assert not any(python_blocks(s) for s in other), "a new python block in the README needs a test here"

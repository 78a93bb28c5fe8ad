"""``--data``: files are read by the CLI, any other name is a server dataset (datasets are plugins)."""

from __future__ import annotations

import numpy as np
import pytest

from deepscope.cli import EXIT_USAGE, CliError, load_data


def test_a_name_goes_to_the_server_whatever_plugin_provides_it():
    assert load_data("digits") == "digits"
    assert load_data("my_plugin_dataset") == "my_plugin_dataset"


def test_npz_gives_inputs_and_labels_limited(tmp_path):
    x, y = np.arange(12, dtype=np.float32).reshape(6, 2), np.arange(6)
    np.savez(tmp_path / "d.npz", x=x, labels=y)
    got_x, got_y = load_data(str(tmp_path / "d.npz"), limit=4)
    np.testing.assert_array_equal(got_x, x[:4])
    np.testing.assert_array_equal(got_y, y[:4])


def test_missing_and_unsupported_files_are_usage_errors(tmp_path):
    with pytest.raises(CliError, match="data file not found"):
        load_data(str(tmp_path / "nope.npy"))
    (tmp_path / "inputs.csv").write_text("1,2\n")
    with pytest.raises(CliError, match="use a .npy or .npz file, or a server dataset name"):
        load_data(str(tmp_path / "inputs.csv"))
    with pytest.raises(CliError, match="use a .npy or .npz file") as error:
        load_data("some/dir/inputs")
    assert error.value.code == EXIT_USAGE

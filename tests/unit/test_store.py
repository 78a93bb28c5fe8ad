"""The store: content-addressed model files, atomic writes, runs surviving a reopen."""

from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import shutil
import sqlite3
import subprocess

import pytest
from onnx import TensorProto, helper

from deepscope.v1 import introspection_pb2 as pb
from deepscope_server.errors import InvalidInput, LimitExceeded, NotFound, StorageFull
from deepscope_server.store import Store, StoreUnusable, claim_store
from deepscope_server.storecheck import check_store, rebuild_catalogue


def test_model_is_content_addressed_and_survives_reopen(tmp_path):
    store = Store(tmp_path)
    data = b"abc" * 1000
    model_id, path, size = store.write_model("m.onnx", [data[:100], data[100:]], max_bytes=10_000)
    assert model_id == hashlib.sha256(data).hexdigest() and size == 3000 and path.read_bytes() == data
    store.add_model(model_id, "m.onnx", "onnx", size, path)
    store.close()
    again = Store(tmp_path)
    assert again.find_model("m.onnx").id == model_id
    assert again.find_model(model_id[:10]).path == path
    with pytest.raises(NotFound, match="did you mean: m.onnx"):
        again.find_model("m.onx")


def test_failed_writes_leave_nothing_behind(tmp_path):
    store = Store(tmp_path)
    with pytest.raises(LimitExceeded, match="max_model_bytes exceeded: 20 bytes > limit 15 bytes"):
        store.write_model("big", [b"x" * 10, b"x" * 10], max_bytes=15)
    with pytest.raises(InvalidInput, match="declared 99 bytes, got 10"):
        store.write_model("short", [b"x" * 10], max_bytes=100, declared_bytes=99)
    with pytest.raises(InvalidInput, match="sha256"):
        store.write_model("corrupt", [b"x" * 10], max_bytes=100, declared_sha256="00" * 32)
    assert [p.name for p in store.models_dir.iterdir()] == []


def test_runs_and_results_persist_and_running_becomes_interrupted(tmp_path):
    store = Store(tmp_path)
    done = pb.RunInfo(config=pb.AnalyzeConfig(models=["m"]))
    store.create_run(done)
    store.add_result(
        done.id, 1, pb.MetricResult(metric="a.b", layer="fc1", status="ok", items=[pb.ResultItem(key="x", scalar=2.0)])
    )
    done.status = pb.RUN_STATUS_COMPLETED
    store.update_run(done)
    crashed = pb.RunInfo()
    store.create_run(crashed)
    store.close()

    reopened = Store(tmp_path)
    detail = reopened.get_run(done.id)
    assert detail.info.status == pb.RUN_STATUS_COMPLETED
    assert detail.results[0].items[0].scalar == 2.0
    assert reopened.get_run(crashed.id).info.status == pb.RUN_STATUS_INTERRUPTED
    assert {r.id for r in reopened.list_runs()} == {done.id, crashed.id}


def test_one_server_per_store(tmp_path):
    """A second server on the same store would mark the first one's running runs interrupted."""
    from deepscope_server.store import StoreInUse

    first = Store(tmp_path)
    running = pb.RunInfo()
    first.create_run(running)
    with pytest.raises(StoreInUse, match=f"store {tmp_path} is in use by another deepscope-server \\(pid "):
        Store(tmp_path)
    assert first.get_run(running.id).info.status == pb.RUN_STATUS_RUNNING  # untouched by the refused second opener
    first.close()
    Store(tmp_path).close()  # free again once the first one is closed


# ------------------------------------------------------------ damage, crashes and a full disk


def _db(store_dir):  # a second connection, as a damaged disk or another tool would act
    return sqlite3.connect(store_dir / "deepscope.db", isolation_level=None)


def _onnx_bytes(scale: float) -> bytes:
    """A small real ONNX model (y = scale * x); ``scale`` makes distinct files."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    graph = helper.make_graph(
        [helper.make_node("Mul", ["x", "s"], ["y"])],
        "g",
        [x],
        [y],
        [helper.make_tensor("s", TensorProto.FLOAT, [1], [scale])],
    )
    return helper.make_model(graph).SerializeToString()


def _upload(store: Store, name: str, data: bytes) -> str:
    model_id, path, size = store.write_model(name, [data], max_bytes=1 << 20)
    store.add_model(model_id, name, "onnx", size, path)
    return model_id


@pytest.mark.parametrize("damage", ["garbage header", "truncated"])
def test_a_damaged_database_refuses_to_open_with_one_line_naming_the_file_and_the_fix(tmp_path, damage):
    store = Store(tmp_path)
    for _ in range(50):  # a database of several pages
        store.create_run(pb.RunInfo(error="x" * 500))
    store.close()
    db = tmp_path / "deepscope.db"
    if damage == "garbage header":
        db.write_bytes(b"this is no database" * 100)
    else:
        db.write_bytes(db.read_bytes()[: db.stat().st_size // 2])
    with pytest.raises(StoreUnusable) as caught:
        Store(tmp_path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"store database {db} is not a valid SQLite file (")
    assert f"deepscope-server --store {tmp_path} --check-store / --rebuild-catalogue" in message
    claim_store(tmp_path).close()  # the refused opener released the store


def test_unreadable_rows_are_skipped_and_reported_not_failing_everyone(tmp_path, caplog):
    store = Store(tmp_path)
    good, bad, text, partial = (pb.RunInfo(error=name) for name in ("good", "bad", "text", "partial"))
    for info in (good, bad, text, partial):
        store.create_run(info)
        info.status = pb.RUN_STATUS_COMPLETED
        store.update_run(info)
    for seq in (1, 2, 3):
        store.add_result(partial.id, seq, pb.MetricResult(metric="a.b", layer=f"l{seq}", status="ok"))
    with _db(tmp_path) as db:
        db.execute("UPDATE runs SET info=? WHERE id=?", (b"\xff\xff\xff", bad.id))  # not a protobuf
        db.execute("UPDATE runs SET info='garbage' WHERE id=?", (text.id,))  # TEXT, not a blob
        db.execute("UPDATE results SET payload=? WHERE run_id=? AND seq=2", (b"\x0a\xff", partial.id))

    with caplog.at_level(logging.WARNING, logger="deepscope_server.store"):
        assert {r.id for r in store.list_runs()} == {good.id, partial.id}
        assert {r.id for r in store.list_runs()} == {good.id, partial.id}
        detail = store.get_run(partial.id)
    assert [r.layer for r in detail.results] == ["l1", "l3"]
    assert detail.info.num_results == 2 and "1 of its 3 stored results are unreadable" in detail.info.error
    skipped = [r.getMessage() for r in caplog.records if r.getMessage().startswith("skipping")]
    assert len(skipped) == 3  # each bad row logged once, not on every listing
    assert any(f"run {bad.id}" in m and "--check-store" in m for m in skipped)
    with pytest.raises(StoreUnusable, match=f"run '{text.id}' has an unreadable record"):
        store.get_run(text.id)
    store.close()
    Store(tmp_path).close()  # bad rows do not stop the next start either


def test_a_cut_off_run_reports_the_results_it_stored(tmp_path):
    store = Store(tmp_path)
    cut = pb.RunInfo()
    store.create_run(cut)
    store.add_result(cut.id, 1, pb.MetricResult(metric="a.b", layer="fc1", status="ok"))
    store.add_result(cut.id, 2, pb.MetricResult(metric="a.c", layer="fc1", status="failed", error="boom"))
    assert store.list_runs()[0].num_results == 2  # true while running too
    store.close()  # the server died: the run's info was never updated

    reopened = Store(tmp_path)
    info = reopened.get_run(cut.id).info
    assert (info.status, info.num_results, info.num_failed) == (pb.RUN_STATUS_INTERRUPTED, 2, 1)
    listed = reopened.list_runs()[0]
    assert (listed.status, listed.num_results, listed.num_failed) == (pb.RUN_STATUS_INTERRUPTED, 2, 1)


def test_a_model_whose_load_was_cut_off_is_removed_at_start(tmp_path, caplog):
    store = Store(tmp_path)
    kept = _upload(store, "kept.onnx", _onnx_bytes(1.0))
    # kill -9 while the server loads an upload: written and renamed into place, never catalogued.
    cut, path, _ = store.write_model("cut.onnx", [_onnx_bytes(2.0)], max_bytes=1 << 20)
    # ...and while another upload was still streaming into its temp file.
    (store.models_dir / ".upload-abc123").write_bytes(b"half")
    store.close()
    assert path.exists()

    with caplog.at_level(logging.WARNING, logger="deepscope_server.store"):
        reopened = Store(tmp_path)
    assert sorted(p.name for p in reopened.models_dir.iterdir()) == [kept]
    assert [m.id for m in reopened.models()] == [kept]
    removed = " ".join(r.getMessage() for r in caplog.records)
    assert f"removed {store.models_dir / cut}" in removed and ".upload-abc123" in removed


def test_a_model_that_fails_to_load_leaves_nothing_behind(tmp_path):
    store = Store(tmp_path)
    _, path, _ = store.write_model("bad.onnx", [b"\x08not really onnx"], max_bytes=1 << 20)
    store.discard_file(path)  # what the model manager does when the loader refuses the file
    assert list(store.models_dir.iterdir()) == []


def test_an_uncatalogued_model_folder_is_kept_and_pointed_at_rebuild(tmp_path, caplog):
    store = Store(tmp_path)
    model_id = _upload(store, "m.onnx", _onnx_bytes(1.0))
    store.close()
    (tmp_path / "deepscope.db").unlink()  # the catalogue is lost, the model files are not
    with caplog.at_level(logging.WARNING, logger="deepscope_server.store"):
        Store(tmp_path).close()
    assert (tmp_path / "models" / model_id / "model").exists()
    assert any("--rebuild-catalogue" in r.getMessage() for r in caplog.records)


@pytest.fixture()
def tiny_disk(tmp_path):
    """A real 1 MiB file system (tmpfs) for the store: writes past it fail with ENOSPC."""
    mount = shutil.which("mount")
    disk = tmp_path / "disk"
    disk.mkdir()
    if mount is None or os.geteuid() != 0:
        pytest.skip("needs root to mount a 1 MiB tmpfs")
    done = subprocess.run([mount, "-t", "tmpfs", "-o", "size=1m", "tmpfs", str(disk)], capture_output=True, text=True)
    if done.returncode != 0:
        pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
    yield disk
    subprocess.run(["umount", "-l", str(disk)], check=True)


def _fill(disk):
    """Take every free byte of ``disk`` (the test's own file, as another process would)."""
    filler = disk / "filler"
    with filler.open("wb", buffering=0) as fh, contextlib.suppress(OSError):
        while fh.write(b"\0" * 4096):
            pass
    return filler


def test_a_full_disk_fails_uploads_and_run_writes_with_storage_full(tiny_disk):
    store = Store(tiny_disk)
    with pytest.raises(
        StorageFull,
        match=rf"^the server's disk is full \(store {tiny_disk}\): saving the upload "
        r"of 'big.onnx' failed: No space left on device",
    ):
        store.write_model("big.onnx", [b"\x08" * 4096] * 512, max_bytes=1 << 30)  # 2 MiB onto 1 MiB
    assert not [p for p in store.models_dir.iterdir()]  # the partial upload is gone

    run = pb.RunInfo()
    store.create_run(run)
    filler = _fill(tiny_disk)
    with pytest.raises(StorageFull, match=r"storing a result of run .* failed: database or disk is full"):
        store.add_result(run.id, 1, pb.MetricResult(metric="a.b", layer="fc1", status="ok", error="x" * 8000))
    with pytest.raises(StorageFull, match="recording a new run failed"):
        store.create_run(pb.RunInfo())
    # The run ends failed at once, even though the database cannot record it yet...
    run.status, run.error = pb.RUN_STATUS_FAILED, "the server's disk is full"
    store.update_run(run)
    assert store.get_run(run.id).info.status == pb.RUN_STATUS_FAILED
    assert [r.status for r in store.list_runs()] == [pb.RUN_STATUS_FAILED]
    with _db(tiny_disk) as db:
        assert db.execute("SELECT status FROM runs").fetchall() == [(pb.RUN_STATUS_RUNNING,)]
    # ...and is recorded as soon as the store accepts writes again.
    filler.unlink()
    assert store.get_run(run.id).info.error == "the server's disk is full"
    store.close()
    reopened = Store(tiny_disk)
    assert reopened.get_run(run.id).info.status == pb.RUN_STATUS_FAILED  # not "interrupted"
    reopened.close()


# ------------------------------------------------------------ --check-store / --rebuild-catalogue


def _report(capsys, command, root):
    code = command(root)
    return code, capsys.readouterr().out


def test_check_store_passes_a_clean_store_and_names_each_problem(tmp_path, capsys):
    store = Store(tmp_path)
    first = _upload(store, "first.onnx", _onnx_bytes(1.0))
    second = _upload(store, "second.onnx", _onnx_bytes(2.0))
    run = pb.RunInfo()
    store.create_run(run)
    store.add_result(run.id, 1, pb.MetricResult(metric="a.b", status="ok"))
    store.close()
    code, out = _report(capsys, check_store, tmp_path)
    assert code == 0 and out.strip() == f"store {tmp_path}: ok (2 catalogued models, 1 runs, 1 results)"

    (tmp_path / "models" / second / "model").write_bytes(b"\x08flipped")  # a damaged file
    with _db(tmp_path) as db:
        db.execute("UPDATE runs SET info=? WHERE id=?", (b"\xff\xff", run.id))
        db.execute("DELETE FROM models WHERE id=?", (first,))
    code, out = _report(capsys, check_store, tmp_path)
    assert code == 1
    problems = [line for line in out.splitlines() if line.startswith("problem: ")]
    assert len(problems) == 3, out
    assert f"model {second[:12]} ('second.onnx'): file {tmp_path / 'models' / second / 'model'} is damaged" in out
    assert f"model file {tmp_path / 'models' / first / 'model'} is not in the catalogue" in out
    assert f"run {run.id} has an unreadable record" in out
    assert out.splitlines()[-1] == (
        f"store {tmp_path}: 3 problem(s); repair: deepscope-server --store {tmp_path} --rebuild-catalogue"
    )


def test_check_store_reports_a_database_that_is_not_sqlite(tmp_path, capsys):
    store = Store(tmp_path)
    _upload(store, "m.onnx", _onnx_bytes(1.0))
    store.close()
    (tmp_path / "deepscope.db").write_bytes(b"garbage" * 1000)
    code, out = _report(capsys, check_store, tmp_path)
    assert code == 1 and f"problem: store database {tmp_path / 'deepscope.db'} is not a valid SQLite file" in out


def test_rebuild_keeps_readable_runs_and_names_and_recovers_lost_models(tmp_path, capsys):
    store = Store(tmp_path)
    named = _upload(store, "named.onnx", _onnx_bytes(1.0))
    lost = _upload(store, "lost.onnx", _onnx_bytes(2.0))
    run, bad = pb.RunInfo(error="kept"), pb.RunInfo()
    for info in (run, bad):
        store.create_run(info)
        info.status = pb.RUN_STATUS_COMPLETED
        store.update_run(info)
    store.add_result(run.id, 1, pb.MetricResult(metric="a.b", status="ok"))
    store.close()
    (tmp_path / "models" / ("f" * 64)).mkdir()  # a folder without a model file is not a model
    with _db(tmp_path) as db:
        db.execute("DELETE FROM models WHERE id=?", (lost,))
        db.execute("UPDATE runs SET info=? WHERE id=?", (b"\xff\xff", bad.id))

    code, out = _report(capsys, rebuild_catalogue, tmp_path)
    assert code == 0, out
    assert f"removed run {bad.id}: its record is unreadable" in out
    assert f"model {lost} onnx 'recovered-{lost[:12]}' (name lost)" in out
    assert _report(capsys, check_store, tmp_path)[0] == 0
    store = Store(tmp_path)
    assert {m.id: (m.name, m.format) for m in store.models()} == {
        named: ("named.onnx", "onnx"),
        lost: (f"recovered-{lost[:12]}", "onnx"),
    }
    assert store.find_model(lost).path.read_bytes() == _onnx_bytes(2.0)
    assert [r.id for r in store.list_runs()] == [run.id]
    assert store.get_run(run.id).results[0].metric == "a.b"
    store.close()


def test_rebuild_moves_a_damaged_database_aside_and_recovers_every_model(tmp_path, capsys):
    store = Store(tmp_path)
    ids = {_upload(store, f"m{i}.onnx", _onnx_bytes(float(i))) for i in range(3)}
    store.close()
    (tmp_path / "deepscope.db").write_bytes(b"garbage" * 1000)
    (tmp_path / "models" / ("e" * 64)).mkdir()
    (tmp_path / "models" / ("e" * 64) / "model").write_bytes(b"not the file its name says")

    code, out = _report(capsys, rebuild_catalogue, tmp_path)
    assert code == 1, out  # one file could not be catalogued: it is left alone and named
    assert f"skipped {tmp_path / 'models' / ('e' * 64) / 'model'}: its sha256 differs" in out
    aside = list(tmp_path.glob("deepscope.db.damaged-*"))
    assert len(aside) == 1 and aside[0].read_bytes() == b"garbage" * 1000
    store = Store(tmp_path)
    assert {m.id for m in store.models()} == ids
    store.close()


def test_rebuild_refuses_a_store_a_server_holds(tmp_path, capsys):
    store = Store(tmp_path)
    code = rebuild_catalogue(tmp_path)
    assert code == 1 and "is in use by another deepscope-server" in capsys.readouterr().err
    store.close()

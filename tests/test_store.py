"""Tests for jkt.store: config hashes, run records, atomic writes, checkpoints with sha256 sidecars."""
import hashlib
import json
import os

import pytest
import torch

from jkt import models, store
from jkt.store import CorruptCheckpoint

CONFIG = {"dataset": "cifar10", "arch": "vgg4", "width": 0.5, "per_class": 10, "seed": 0,
          "objective": {"alpha": 1.0, "beta": 1.0, "gamma": 0.0}}


def files(folder):
    return sorted(p.name for p in folder.iterdir())


# ---------------------------------------------------------------- config_hash
def test_config_hash_is_stable_under_key_order():
    reordered = dict(reversed(list(CONFIG.items())))
    reordered["objective"] = {"gamma": 0.0, "beta": 1.0, "alpha": 1.0}
    assert list(reordered) != list(CONFIG)
    h = store.config_hash(CONFIG)
    assert h == store.config_hash(reordered)
    assert len(h) == 16 and int(h, 16) >= 0
    # an independent computation: sha256 of the canonical JSON
    canonical = json.dumps(CONFIG, sort_keys=True, separators=(",", ":"))
    assert h == hashlib.sha256(canonical.encode()).hexdigest()[:16]


@pytest.mark.parametrize("key, value", [("width", 0.25), ("seed", 1), ("per_class", "full"), ("arch", "vgg9"),
                                        ("objective", {"alpha": 1.0, "beta": 1.0, "gamma": 1.0})])
def test_config_hash_changes_with_any_value(key, value):
    assert store.config_hash(dict(CONFIG, **{key: value})) != store.config_hash(CONFIG)


def test_config_hash_distinguishes_types():
    assert store.config_hash({"seed": 1}) != store.config_hash({"seed": "1"})
    assert store.config_hash({"a": 1}) != store.config_hash({"a": 1, "b": None})


# ---------------------------------------------------------------- records
def test_save_and_load_record_round_trip(tmp_path):
    metrics = {"test_accuracy": 61.25, "history": [2.3, 1.1], "seconds": 12.5}
    path = store.save_record(CONFIG, metrics, root=tmp_path)
    assert path == tmp_path / f"{store.config_hash(CONFIG)}.json"
    assert files(tmp_path) == [path.name]  # no temporary file left behind
    record = store.load_record(dict(reversed(list(CONFIG.items()))), root=tmp_path)
    assert record == {"key": store.config_hash(CONFIG), "config": CONFIG, "metrics": metrics}
    assert json.loads(path.read_text())["metrics"] == metrics
    assert store.load_record(dict(CONFIG, seed=5), root=tmp_path) is None


def test_results_root_from_environment(tmp_path, monkeypatch):
    monkeypatch.setenv("JKT_RESULTS", str(tmp_path / "env"))
    assert store.results_root() == tmp_path / "env"
    assert store.results_root(tmp_path / "given") == tmp_path / "given"
    path = store.save_record(CONFIG, {"a": 1})
    assert path.parent == tmp_path / "env"


def test_unreadable_record_is_reported_and_ignored(tmp_path):
    path = store.save_record(CONFIG, {"acc": 1.0}, root=tmp_path)
    path.write_text('{"key": "trunc')
    with pytest.warns(UserWarning, match="unreadable"):
        assert store.load_record(CONFIG, root=tmp_path) is None
    path.write_bytes(b"\xff\xfe\x00garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        assert store.load_record(CONFIG, root=tmp_path) is None


def test_record_with_another_key_is_not_returned(tmp_path):
    path = store.save_record(CONFIG, {"acc": 1.0}, root=tmp_path)
    record = json.loads(path.read_text())
    record["key"] = "0" * 16
    path.write_text(json.dumps(record))
    assert store.load_record(CONFIG, root=tmp_path) is None


def test_load_records_dataframe(tmp_path):
    configs = [dict(CONFIG, seed=s, per_class=p) for s in (0, 1) for p in (10, 50)]
    for i, config in enumerate(configs):
        store.save_record(config, {"test_accuracy": 50.0 + i, "seed": 99}, root=tmp_path)
    frame = store.load_records(tmp_path)
    assert len(frame) == 4
    for column in ("key", "dataset", "arch", "width", "per_class", "seed", "objective", "test_accuracy",
                   "metric_seed"):
        assert column in frame.columns, column
    assert sorted(frame["test_accuracy"]) == [50.0, 51.0, 52.0, 53.0]
    assert set(frame["seed"]) == {0, 1} and set(frame["metric_seed"]) == {99}
    assert set(frame["key"]) == {store.config_hash(c) for c in configs}
    # one row per record, matched to its config
    for config in configs:
        row = frame[frame["key"] == store.config_hash(config)].iloc[0]
        assert row["seed"] == config["seed"] and row["per_class"] == config["per_class"]
        assert json.loads(row["objective"]) == config["objective"]
    only = store.load_records(tmp_path, per_class=10, seed=1)
    assert len(only) == 1 and only.iloc[0]["per_class"] == 10 and only.iloc[0]["seed"] == 1


def test_load_records_empty(tmp_path):
    assert len(store.load_records(tmp_path)) == 0


# ---------------------------------------------------------------- atomic writes
def test_atomic_write_leaves_no_temporary_files(tmp_path):
    target = tmp_path / "sub" / "file.bin"
    store.atomic_write_bytes(target, b"first")
    store.atomic_write_bytes(target, b"second")
    assert target.read_bytes() == b"second"
    assert files(target.parent) == ["file.bin"]
    store.atomic_write_text(tmp_path / "t.txt", "héllo")
    assert (tmp_path / "t.txt").read_text() == "héllo"


def test_failure_mid_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = store.save_record(CONFIG, {"acc": 1.0}, root=tmp_path)
    before = path.read_bytes()

    def crash(src, dst):
        raise OSError("disk went away")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="disk went away"):
        store.save_record(CONFIG, {"acc": 2.0}, root=tmp_path)
    assert path.read_bytes() == before
    assert files(tmp_path) == [path.name]
    monkeypatch.undo()
    assert store.load_record(CONFIG, root=tmp_path)["metrics"] == {"acc": 1.0}


def test_interrupted_write_keeps_the_old_file(tmp_path, monkeypatch):
    """A KeyboardInterrupt during the fsync is cleaned up too."""
    target = tmp_path / "f.bin"
    store.atomic_write_bytes(target, b"old")

    def interrupt(fd):
        raise KeyboardInterrupt

    monkeypatch.setattr(os, "fsync", interrupt)
    with pytest.raises(KeyboardInterrupt):
        store.atomic_write_bytes(target, b"new")
    assert target.read_bytes() == b"old" and files(tmp_path) == ["f.bin"]


# ---------------------------------------------------------------- checkpoints
@pytest.fixture
def state():
    torch.manual_seed(0)
    model = models.build("vgg4", 1, 3, width=0.125)
    model(torch.randn(4, 1, 8, 8))  # non-trivial BatchNorm buffers
    return model.state_dict()


def test_checkpoint_round_trip(tmp_path, state):
    path = store.save_checkpoint(tmp_path / "ckpt" / "t.pt", state, {"test_accuracy": 42.0, "epochs": 1})
    assert files(path.parent) == ["t.pt", "t.pt.json"]
    sidecar = json.loads((path.parent / "t.pt.json").read_text())
    assert sidecar["sha256"] == hashlib.sha256(path.read_bytes()).hexdigest() and sidecar["file"] == "t.pt"
    loaded, meta = store.load_checkpoint(path)
    assert meta["test_accuracy"] == 42.0 and meta["epochs"] == 1
    assert list(loaded) == list(state)
    for k, v in state.items():
        assert loaded[k].dtype == v.dtype and torch.equal(loaded[k], v), k
    fresh = models.build("vgg4", 1, 3, width=0.125)
    fresh.load_state_dict(loaded)


def test_flipped_byte_is_a_corrupt_checkpoint(tmp_path, state):
    path = store.save_checkpoint(tmp_path / "t.pt", state, {})
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    with pytest.raises(CorruptCheckpoint, match="sha256"):
        store.load_checkpoint(path)


def test_truncated_checkpoint_with_matching_hash_cannot_load(tmp_path, state):
    path = store.save_checkpoint(tmp_path / "t.pt", state, {})
    path.write_bytes(path.read_bytes()[:100])
    sidecar = path.with_name("t.pt.json")
    meta = json.loads(sidecar.read_text())
    meta["sha256"] = hashlib.sha256(path.read_bytes()).hexdigest()
    sidecar.write_text(json.dumps(meta))
    with pytest.raises(CorruptCheckpoint, match="cannot be loaded"):
        store.load_checkpoint(path)


def test_missing_sidecar_or_file(tmp_path, state):
    path = store.save_checkpoint(tmp_path / "t.pt", state, {})
    sidecar = path.with_name("t.pt.json")
    text = sidecar.read_text()
    sidecar.unlink()
    with pytest.raises(CorruptCheckpoint, match="sidecar|missing"):
        store.load_checkpoint(path)
    sidecar.write_text("{broken")
    with pytest.raises(CorruptCheckpoint):
        store.load_checkpoint(path)
    sidecar.write_text(text)
    path.unlink()
    with pytest.raises(CorruptCheckpoint, match="missing"):
        store.load_checkpoint(path)
    assert issubclass(CorruptCheckpoint, RuntimeError)


def test_checkpoint_cannot_run_code(tmp_path):
    """weights_only loading: a pickle that would execute code is refused (reported as corrupt)."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (os.system, ("echo pwned > " + str(tmp_path / "pwned"),))

    path = tmp_path / "evil.pt"
    data = pickle.dumps({"w": Evil()}, protocol=2)
    buffer_path = tmp_path / "tmp.pt"
    torch.save({"w": torch.zeros(1)}, buffer_path)  # a real zip checkpoint to smuggle the pickle into
    import zipfile

    with zipfile.ZipFile(buffer_path) as src, zipfile.ZipFile(path, "w") as dst:
        for item in src.infolist():
            content = src.read(item.filename)
            if item.filename.endswith("data.pkl"):
                content = data
            dst.writestr(item, content)
    path.with_name("evil.pt.json").write_text(json.dumps({"sha256": hashlib.sha256(path.read_bytes()).hexdigest()}))
    with pytest.raises(CorruptCheckpoint):
        store.load_checkpoint(path)
    assert not (tmp_path / "pwned").exists()


@pytest.mark.parametrize("text", ["{not json", '{"key": "x"}', "[1, 2]"])
def test_a_file_that_is_not_a_record_is_an_error_naming_it(tmp_path, text):
    store.save_record(CONFIG, {"test_accuracy": 50.0}, root=tmp_path)
    (tmp_path / "broken.json").write_text(text)
    with pytest.raises(store.UnreadableRecord, match="broken.json"):
        store.load_records(tmp_path)

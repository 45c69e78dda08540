"""bnref.records: run and experiment records round-trip through JSON; bad files are ValueErrors naming the file."""

from __future__ import annotations

import datetime as dt
import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from bnref import records
from bnref.records import (
    EpochRecord,
    ExperimentRecord,
    RunConfig,
    RunRecord,
    load_experiment,
    load_experiments,
    load_record,
    load_records,
)


def a_run(seed: int = 0) -> RunRecord:
    return RunRecord(
        framework="torch",
        framework_version="2.x",
        backend=None,
        backend_version=None,
        device={"type": "cpu", "name": "some CPU"},
        machine=records.machine_info(),
        seed=seed,
        config=RunConfig(bn="native", placement="after", epochs=2, batch_size=128, lr=1e-3),
        epochs=[
            EpochRecord(1, 0.5, 0.8, 0.4, 0.85, 1.0, 0.1, 1.1),
            EpochRecord(2, 0.3, 0.9, 0.35, 0.88, 1.0, 0.1, 1.1),
        ],
        setup_s=0.2,
        created_utc=records.now_utc(),
    )


def an_experiment(seeds=(0, 1, 2), name: str = "toy") -> ExperimentRecord:
    return ExperimentRecord.create(
        name,
        {"epochs": 3, "lrs": (0.1, 0.01), "model": {"width": np.int64(8)}},
        seeds,
        {s: {"loss": np.float32(0.25) * (s + 1), "curve": np.arange(3.0), "diverged": float("nan")} for s in seeds},
    )


def test_run_record_round_trip(tmp_path):
    run = a_run()
    path = run.save(tmp_path / "sub" / "run.json")
    back = load_record(path)
    assert back == run
    assert back.final.test_acc == 0.88 and back.label == "torch, BN native after"
    assert [r.seed for r in load_records(tmp_path / "sub")] == [0]


def test_experiment_round_trip_keeps_every_value(tmp_path):
    rec = an_experiment()
    path = rec.save(tmp_path / "toy.json")
    back = load_experiment(path)
    # NaN != NaN, so compare the JSON texts, which are equal exactly when every value is.
    assert json.dumps(back.to_dict(), sort_keys=True) == json.dumps(rec.to_dict(), sort_keys=True)
    assert back.schema == "bnref.experiment/1" and back.seeds == [0, 1, 2]
    assert back.config == {"epochs": 3, "lrs": [0.1, 0.01], "model": {"width": 8}}
    assert back.result(2)["loss"] == pytest.approx(0.75) and back.result(1)["curve"] == [0.0, 1.0, 2.0]
    assert np.isnan(back.result(0)["diverged"])
    assert [s for s, _ in back.per_seed()] == [0, 1, 2]
    with pytest.raises(ValueError, match="seed 7 is not in this record"):
        back.result(7)


def test_experiment_record_is_stamped_with_machine_and_time():
    rec = an_experiment()
    assert rec.device == records.cpu_device() and rec.machine == records.machine_info()
    assert "hostname" not in json.dumps(rec.machine).lower()
    t = dt.datetime.fromisoformat(rec.created_utc)
    assert t.utcoffset() == dt.timedelta(0)
    assert abs((dt.datetime.now(dt.UTC) - t).total_seconds()) < 60


def test_load_experiments_filters_by_schema_and_name(tmp_path):
    an_experiment(name="b").save(tmp_path / "2.json")
    an_experiment(name="a", seeds=(5,)).save(tmp_path / "1.json")
    a_run().save(tmp_path / "run.json")  # another schema: passed over
    (tmp_path / "bench.json").write_text(json.dumps({"schema": "bnref.benchmark/1"}))
    (tmp_path / "notes.txt").write_text("not json")
    assert [r.name for r in load_experiments(tmp_path)] == ["a", "b"]
    assert [r.seeds for r in load_experiments(tmp_path, name="b")] == [[0, 1, 2]]
    assert load_experiments(tmp_path, name="c") == []
    assert load_experiments(tmp_path / "missing") == []
    assert [r.seed for r in load_records(tmp_path)] == [0]


@pytest.mark.parametrize("loader", [load_experiment, load_record])
def test_truncated_file_is_a_value_error_naming_it(tmp_path, loader):
    path = an_experiment().save(tmp_path / "cut.json")
    text = path.read_text()
    path.write_text(text[: len(text) // 2])
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*not valid JSON"):
        loader(path)


def test_corrupt_file_in_a_folder_is_a_value_error_naming_it(tmp_path):
    an_experiment().save(tmp_path / "good.json")
    (tmp_path / "bad.json").write_bytes(b"\xff\xfe{garbage")
    for load in (load_experiments, load_records):
        with pytest.raises(ValueError, match=re.escape(str(tmp_path / "bad.json"))):
            load(tmp_path)


def test_empty_file_is_a_value_error(tmp_path):
    (tmp_path / "empty.json").write_text("")
    with pytest.raises(ValueError, match="empty.json: not valid JSON"):
        load_experiment(tmp_path / "empty.json")


def good_dict() -> dict:
    return an_experiment().to_dict()


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda d: d.pop("seeds"), r"missing fields \['seeds'\]"),
        (lambda d: d.pop("code_version"), r"missing fields \['code_version'\]"),
        (lambda d: d.update(schema="bnref.run/1"), "schema is 'bnref.run/1'"),
        (lambda d: d.update(extra=1), r"unknown fields \['extra'\]"),
        (lambda d: d.update(name=""), "'name' must be a non-empty string"),
        (lambda d: d.update(config=[1, 2]), "'config' must be a JSON object"),
        (lambda d: d.update(seeds=[]), "'seeds' must be a non-empty list"),
        (lambda d: d.update(seeds=[0, 1, "2"]), "'seeds' must hold integers"),
        (lambda d: d.update(seeds=[0, 1, True]), "'seeds' must hold integers"),
        (lambda d: d.update(seeds=[0, 1, 1]), "'seeds' repeats a seed"),
        (lambda d: d["results"].pop("1"), "'results' must have one entry per seed"),
        (lambda d: d["results"].update({"9": {}}), "'results' must have one entry per seed"),
        (lambda d: d.update(device={"type": "cpu"}), "'device' needs a string 'name'"),
        (lambda d: d.update(created_utc=None), "'created_utc' must be a string"),
    ],
)
def test_malformed_experiment_names_the_field(tmp_path, change, message):
    d = good_dict()
    change(d)
    path = tmp_path / "x.json"
    path.write_text(json.dumps(d))
    with pytest.raises(ValueError, match=re.escape(str(path)) + ".*" + message):
        load_experiment(path)


def test_malformed_experiment_in_folder_raises_and_non_object_is_rejected(tmp_path):
    d = good_dict()
    del d["results"]["0"]
    (tmp_path / "x.json").write_text(json.dumps(d))
    with pytest.raises(ValueError, match="x.json.*one entry per seed"):
        load_experiments(tmp_path)
    with pytest.raises(ValueError, match="is a JSON object, got list"):
        ExperimentRecord.from_dict([1, 2])


def test_constructor_validates_too():
    with pytest.raises(ValueError, match="'results' must have one entry per seed"):
        ExperimentRecord.create("x", {}, [0, 1], {0: 1})


def test_json_ready_converts_numpy_and_rejects_what_json_cannot_hold():
    assert records.json_ready({"a": (np.float32(1.5), np.arange(2))}) == {"a": [1.5, [0, 1]]}
    assert type(records.json_ready(np.int64(3))) is int
    with pytest.raises(ValueError, match="keys must be strings"):
        records.json_ready({1: 2})
    with pytest.raises(ValueError, match="cannot write a set"):
        records.json_ready({"a": {1, 2}})


def test_code_version_is_this_commit_or_unknown(tmp_path):
    root = Path(records.__file__).resolve().parent.parent
    version = records.code_version()
    head = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True, text=True, check=False)
    tracked = (
        subprocess.run(
            ["git", "-C", str(root), "ls-files", "--error-unmatch", "bnref/records.py"],
            capture_output=True,
            check=False,
        ).returncode
        == 0
    )
    if head.returncode == 0 and tracked:
        assert re.fullmatch(r"[0-9a-f]{40}(\+dirty)?", version)
        assert version.split("+")[0] == head.stdout.strip()
    else:
        assert version == "unknown"


def test_code_version_outside_a_repository_is_unknown(tmp_path):
    # A copy of the module outside any git repository cannot name a commit.
    pkg = tmp_path / "bnref"
    pkg.mkdir()
    src = Path(records.__file__).resolve().parent
    (pkg / "records.py").write_text((src / "records.py").read_text())
    (pkg / "__init__.py").write_text("")  # records needs nothing else of the package
    code = "import bnref.records as r; print(r.code_version())"
    out = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        env={"PATH": "/usr/bin:/bin", "GIT_CEILING_DIRECTORIES": str(tmp_path.parent)},
    )
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "unknown"


def test_cpu_name_and_now():
    assert records.cpu_name().endswith("logical CPUs)")
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", records.now_utc())


def test_run_config_default_model_is_the_article_network():
    """RunConfig names the article's network without importing the model module; the two must agree."""
    from bnref.mnist.models import HIDDEN, INPUT_DIM, NUM_CLASSES

    expected = f"mlp {INPUT_DIM}-{'-'.join(map(str, HIDDEN))}-{NUM_CLASSES}"
    assert records.RunConfig(bn="none", placement="after", epochs=1, batch_size=1, lr=0.1).model == expected


def test_moved_module_names_are_mapped_once():
    """Records written before the package moved into layers name the old modules; the map renames whole names only."""
    w = records.with_current_module_names
    assert w("glorot (bnref.models.initial_weights)") == "glorot (bnref.mnist.models.initial_weights)"
    assert w({"a": ["bnref.distributed.SyncBatchNorm"]}) == {"a": ["bnref.layers.sync_bn.SyncBatchNorm"]}
    assert w("bnref.distributed.merge_statistics") == "bnref.experiments.distributed.merge_statistics"
    assert w("bnref.experiments.train_sgd") == "bnref.experiments.probes.train_sgd"
    for current in ("bnref.experiments.claims.run", "bnref.mnist.models.x", "bnref.modelsX", "bnref.reference"):
        assert w(current) == current


# ---------------------------------------------------------------------------------------------
# records name the commit that made them: the commands refuse a dirty tree, and no committed record comes from one
# ---------------------------------------------------------------------------------------------

RESULTS = Path(__file__).resolve().parents[1] / "book" / "results"


def test_require_clean_tree_refuses_dirty_unless_allowed(monkeypatch):
    monkeypatch.setattr(records, "code_version", lambda: "0123abcd+dirty")
    with pytest.raises(records.DirtyTreeError, match="uncommitted changes.*--allow-dirty"):
        records.require_clean_tree()
    assert records.require_clean_tree(allow_dirty=True) == "0123abcd+dirty"
    monkeypatch.setattr(records, "code_version", lambda: "0123abcd")
    assert records.require_clean_tree() == "0123abcd"
    monkeypatch.setattr(records, "code_version", lambda: "unknown")  # no repository: claims no commit
    assert records.require_clean_tree() == "unknown"


def test_experiments_run_refuses_a_dirty_tree(monkeypatch, tmp_path, capsys):
    from bnref.experiments import cli

    monkeypatch.setattr(records, "code_version", lambda: "0123abcd+dirty")
    assert cli.main(["run", "claims-cost", "--out", str(tmp_path)]) == 2
    assert "--allow-dirty" in capsys.readouterr().err
    assert not list(tmp_path.iterdir())


def committed_code_versions() -> list[tuple[str, str]]:
    """(file, code version) of every committed record in book/results that names the code it ran."""
    found = []
    for path in sorted(RESULTS.glob("*.json")):
        record = json.loads(path.read_text())
        for key in ("code_version", "code"):
            if isinstance(record, dict) and isinstance(record.get(key), str):
                found.append((path.name, record[key]))
    return found


def test_no_committed_record_comes_from_a_dirty_tree():
    versions = committed_code_versions()
    assert len(versions) >= 20  # every experiment, survey and benchmark record that names its code
    dirty = [name for name, version in versions if version.endswith("+dirty")]
    assert not dirty, f"records made from a tree with uncommitted changes (re-run them from a clean commit): {dirty}"
    bad = [(name, v) for name, v in versions if not re.fullmatch(r"[0-9a-f]{40}", v)]
    assert not bad, f"records whose code version is not a commit: {bad}"


def test_committed_records_name_commits_of_this_history():
    root = RESULTS.parents[1]
    try:
        shallow = subprocess.run(
            ["git", "-C", str(root), "rev-parse", "--is-shallow-repository"], capture_output=True, text=True, check=True
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout")
    if shallow == "true":
        pytest.skip("a shallow clone lacks the older commits")
    for name, version in committed_code_versions():
        ok = subprocess.run(
            ["git", "-C", str(root), "merge-base", "--is-ancestor", version, "HEAD"], capture_output=True
        ).returncode
        assert ok == 0, f"{name}: code version {version} is not a commit in this branch's history"

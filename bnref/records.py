"""Results records: what a run or an experiment produced, as schema-versioned JSON, and where it ran.

Two kinds of record, both plain JSON objects with a ``"schema"`` field:

* :class:`RunRecord` (schema ``"bnref.run/1"``): one training run of the article's MNIST model
  (configuration, framework and version, device, machine, seed, and per epoch the training and test
  loss and accuracy with the wall time). :mod:`bnref.mnist.training` writes them.
* :class:`ExperimentRecord` (schema ``"bnref.experiment/1"``): one experiment over several seeds.
  Its ``config`` is the experiment's full definition, ``results`` maps each seed (as a string, since
  JSON keys are strings) to that seed's results, and it names the code version, machine and device.
  The book's chapters draw their figures and verdicts from committed experiment records under
  ``book/results/``, so what a chapter shows is the same on every machine that builds it.

The module also describes the machine a record comes from (:func:`machine_info`, :func:`cpu_name`,
:func:`code_version`, :func:`now_utc`); deliberately without hostname or user name.

Only the standard library and NumPy are imported here.

JSON details: a value that is not finite (a diverged loss) is written as ``NaN`` or ``Infinity``,
as Python's :mod:`json` does, and read back as such. :func:`json_ready` turns NumPy scalars and arrays,
tuples and dataclasses into plain JSON values before writing.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as _dt
import json
import os
import platform
import re
import subprocess
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np

from . import validation as v

__all__ = [
    "DirtyTreeError",
    "require_clean_tree",
    "add_allow_dirty_argument",
    "refuse_dirty_tree",
    "EXPERIMENT_SCHEMA",
    "SCHEMA",
    "EpochRecord",
    "ExperimentRecord",
    "RunConfig",
    "RunRecord",
    "code_version",
    "cpu_device",
    "device_slug",
    "cpu_name",
    "json_ready",
    "load_experiment",
    "load_experiments",
    "load_record",
    "load_records",
    "machine_info",
    "now_utc",
    "read_json",
]

SCHEMA = "bnref.run/1"
EXPERIMENT_SCHEMA = "bnref.experiment/1"


# --------------------------------------------------------------------------------------------
# JSON
# --------------------------------------------------------------------------------------------


def read_json(path: str | os.PathLike) -> Any:
    """Parse a JSON file; a corrupt, truncated or non-UTF-8 file raises ValueError naming the file.

    A missing file raises FileNotFoundError, as :func:`open` does.
    """
    path = Path(path)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as e:
        raise ValueError(f"{path}: not valid JSON ({e})") from e
    except UnicodeDecodeError as e:
        raise ValueError(f"{path}: not UTF-8 text ({e})") from e


def json_ready(value: Any) -> Any:
    """``value`` with NumPy scalars and arrays, tuples and dataclasses turned into plain JSON values.

    Dicts keep their keys, which must be strings; lists and tuples become lists; ``np.float32(0.5)``
    becomes ``0.5``; an array becomes nested lists. Anything else JSON cannot hold raises ValueError.
    """
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return json_ready(dataclasses.asdict(value))
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise ValueError(f"JSON object keys must be strings; got {k!r}")
            out[k] = json_ready(v)
        return out
    if isinstance(value, (list, tuple)):
        return [json_ready(v) for v in value]
    if isinstance(value, np.ndarray):
        return json_ready(value.tolist())
    if isinstance(value, np.generic):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    raise ValueError(f"cannot write a {type(value).__name__} to JSON: {value!r}")


def _write_json(path: str | os.PathLike, d: dict[str, Any]) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_ready(d), indent=1) + "\n", encoding="utf-8")
    return path


# --------------------------------------------------------------------------------------------
# one training run
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class EpochRecord:
    """What one epoch produced. Losses are mean cross-entropy (nats), accuracies fractions in [0, 1].

    ``train_loss``/``train_acc`` average the training-mode batches of the epoch (weighted by batch
    size); ``test_loss``/``test_acc`` are measured on the whole test set after the epoch, in
    inference mode. ``train_eval_loss``/``train_eval_acc``, when the run asked for them (the trainers'
    ``train_eval`` option), are measured after the epoch in inference mode on a fixed subset of the training
    set (the run's config says which); None otherwise, and then left out of the JSON, so records written
    before these fields existed load as they are. ``train_s`` + ``eval_s`` = ``wall_s`` (seconds); ``eval_s``
    covers every evaluation after the epoch.
    """

    epoch: int
    train_loss: float
    train_acc: float
    test_loss: float
    test_acc: float
    train_s: float
    eval_s: float
    wall_s: float
    train_eval_loss: float | None = None
    train_eval_acc: float | None = None


#: The optional fields of :class:`EpochRecord`: written to JSON only when set.
OPTIONAL_EPOCH_FIELDS = ("train_eval_loss", "train_eval_acc")


@dataclasses.dataclass
class RunConfig:
    """How a run was configured (the same keys for both frameworks)."""

    bn: str
    placement: str
    epochs: int
    batch_size: int
    lr: float
    #: The article's network (``bnref.mnist.models``: INPUT_DIM-HIDDEN-NUM_CLASSES); a test keeps the two equal,
    #: so that this NumPy-only module need not import the model module.
    model: str = "mlp 784-64-32-10"
    optimizer: str = "adam"
    loss: str = "categorical cross-entropy"
    init: str = "glorot-uniform weights, zero biases (bnref.mnist.models.initial_weights)"
    train_size: int = 0
    test_size: int = 0
    trainer: str = ""
    details: dict[str, Any] = dataclasses.field(default_factory=dict)


@dataclasses.dataclass
class RunRecord:
    """One training run, as written to JSON (schema ``"bnref.run/1"``).

    Attributes
    ----------
    framework : str
        ``"torch"`` or ``"keras"``.
    framework_version : str
    backend : str or None
        The Keras backend (``"tensorflow"``, ``"torch"``, ``"jax"``); None for PyTorch runs.
    backend_version : str or None
    device : dict
        ``{"type": "cpu" | "cuda" | "mps" | "gpu", "name": "..."}``.
    machine : dict
        :func:`machine_info`: operating system, architecture, CPU model and count, Python and NumPy
        versions. No hostname.
    seed : int
    config : RunConfig
    epochs : list of EpochRecord
    setup_s : float
        Seconds before the first epoch that the trainer spent (moving data, capturing a CUDA graph).
        Keras traces its functions inside the first epoch, so its setup_s is 0.
    created_utc : str
        ISO 8601 time of the run's end (:func:`now_utc`).
    """

    framework: str
    framework_version: str
    backend: str | None
    backend_version: str | None
    device: dict[str, str]
    machine: dict[str, Any]
    seed: int
    config: RunConfig
    epochs: list[EpochRecord]
    setup_s: float
    created_utc: str
    schema: str = SCHEMA

    # -- derived numbers the book prints --------------------------------------------------------
    @property
    def final(self) -> EpochRecord:
        """The last epoch."""
        return self.epochs[-1]

    @property
    def mean_epoch_s(self) -> float:
        """Mean wall time of an epoch (training + test evaluation), seconds."""
        return float(np.mean([e.wall_s for e in self.epochs]))

    @property
    def train_time_s(self) -> float:
        """Seconds spent training (all epochs, without evaluation and setup)."""
        return float(sum(e.train_s for e in self.epochs))

    @property
    def total_s(self) -> float:
        """Setup plus every epoch's wall time, seconds."""
        return float(self.setup_s + sum(e.wall_s for e in self.epochs))

    @property
    def label(self) -> str:
        """A short name such as ``"torch, BN native after"`` or ``"keras/tensorflow, no BN"``."""
        fw = self.framework if self.backend is None else f"{self.framework}/{self.backend}"
        bn = "no BN" if self.config.bn == "none" else f"BN {self.config.bn} {self.config.placement}"
        return f"{fw}, {bn}"

    # -- JSON ------------------------------------------------------------------------------------
    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready); an epoch's optional fields that are None are left out."""
        d = json_ready(dataclasses.asdict(self))
        for epoch in d["epochs"]:
            for name in OPTIONAL_EPOCH_FIELDS:
                if epoch.get(name) is None:
                    epoch.pop(name, None)
        return d

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record as indented JSON (creating the folder); return the path."""
        return _write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, source: str = "record") -> RunRecord:
        """Rebuild a record, raising ValueError that names the missing or malformed field."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: a results record is a JSON object, got {type(d).__name__}")
        if d.get("schema") != SCHEMA:
            raise ValueError(f"{source}: schema is {d.get('schema')!r}, expected {SCHEMA!r}")
        names = {f.name for f in dataclasses.fields(cls)}
        missing = sorted(n for n in names if n not in d and n != "schema")
        if missing:
            raise ValueError(f"{source}: missing fields {missing}")
        try:
            config = RunConfig(**d["config"])
            epochs = [EpochRecord(**e) for e in d["epochs"]]
        except TypeError as e:
            raise ValueError(f"{source}: malformed config or epochs ({e})") from e
        if not epochs:
            raise ValueError(f"{source}: no epochs recorded")
        fields = {k: d[k] for k in names if k not in ("config", "epochs")}
        return cls(**fields, config=config, epochs=epochs)


def load_record(path: str | os.PathLike) -> RunRecord:
    """Read one results record written by :meth:`RunRecord.save`."""
    return RunRecord.from_dict(read_json(path), source=str(path))


def _json_files_with_schema(folder: str | os.PathLike, schema: str) -> Iterable[tuple[Path, dict[str, Any]]]:
    folder = Path(folder)
    if not folder.is_dir():
        return
    for path in sorted(folder.glob("*.json")):
        d = read_json(path)
        if isinstance(d, dict) and d.get("schema") == schema:
            yield path, d


def load_records(folder: str | os.PathLike) -> list[RunRecord]:
    """Every results record (``*.json`` with schema ``"bnref.run/1"``) in a folder, sorted by file name.

    JSON files of another schema (for instance benchmark outputs, ``"bnref.benchmark/1"``) are
    passed over; a file that claims the run schema but is malformed, or a file that is not valid
    JSON, raises ValueError. A missing folder gives an empty list.
    """
    return [RunRecord.from_dict(d, source=str(p)) for p, d in _json_files_with_schema(folder, SCHEMA)]


# --------------------------------------------------------------------------------------------
# one experiment over several seeds
# --------------------------------------------------------------------------------------------


@dataclasses.dataclass
class ExperimentRecord:
    """An experiment run with several seeds, as written to JSON (schema ``"bnref.experiment/1"``).

    Attributes
    ----------
    name : str
        The experiment's name (``"mnist"``, ``"claims-lr"``, ...), by which chapters find it.
    config : dict
        The experiment's full definition (everything needed to run it again), JSON-ready. A test
        compares it with the definition in ``bnref``, so that a committed record cannot silently
        describe another experiment than the code defines.
    code_version : str
        :func:`code_version` when the experiment ran: a git commit, ``"+dirty"`` if the working tree
        had uncommitted changes.
    machine : dict
        :func:`machine_info`.
    device : dict
        ``{"type": ..., "name": ...}``: where the numbers were computed (``"cpu"`` with the CPU's
        name for NumPy experiments; the GPU's name for CUDA).
    seeds : list of int
        The seeds run, each once.
    results : dict
        ``str(seed) -> that seed's results`` (any JSON value), one entry per seed in ``seeds``.
    created_utc : str
        ISO 8601 time the experiment finished (:func:`now_utc`).
    schema : str
        ``"bnref.experiment/1"``.
    """

    name: str
    config: dict[str, Any]
    code_version: str
    machine: dict[str, Any]
    device: dict[str, str]
    seeds: list[int]
    results: dict[str, Any]
    created_utc: str
    schema: str = EXPERIMENT_SCHEMA

    def __post_init__(self) -> None:
        self.validate()

    def validate(self, source: str = "experiment record") -> None:
        """Raise ValueError naming the first field that is missing a required part or has the wrong type."""
        if not (isinstance(self.name, str) and self.name):
            raise ValueError(f"{source}: field 'name' must be a non-empty string; got {self.name!r}")
        for field, kind in (("config", dict), ("machine", dict), ("device", dict), ("results", dict)):
            if not isinstance(getattr(self, field), kind):
                raise ValueError(
                    f"{source}: field {field!r} must be a JSON object; got {type(getattr(self, field)).__name__}"
                )
        for field in ("code_version", "created_utc", "schema"):
            if not isinstance(getattr(self, field), str):
                raise ValueError(f"{source}: field {field!r} must be a string; got {getattr(self, field)!r}")
        if self.schema != EXPERIMENT_SCHEMA:
            raise ValueError(f"{source}: field 'schema' is {self.schema!r}, expected {EXPERIMENT_SCHEMA!r}")
        for key in ("type", "name"):
            if not isinstance(self.device.get(key), str):
                raise ValueError(f"{source}: field 'device' needs a string {key!r}; got {self.device!r}")
        if not (isinstance(self.seeds, list) and self.seeds):
            raise ValueError(f"{source}: field 'seeds' must be a non-empty list of integers; got {self.seeds!r}")
        if not all(v.is_int(s) for s in self.seeds):
            raise ValueError(f"{source}: field 'seeds' must hold integers only; got {self.seeds!r}")
        if len(set(self.seeds)) != len(self.seeds):
            raise ValueError(f"{source}: field 'seeds' repeats a seed: {self.seeds!r}")
        expected = {str(s) for s in self.seeds}
        if set(self.results) != expected:
            raise ValueError(
                f"{source}: field 'results' must have one entry per seed, keys {sorted(expected)}; "
                f"got keys {sorted(self.results)}"
            )

    def result(self, seed: int) -> Any:
        """The results of one seed."""
        if seed not in self.seeds:
            raise ValueError(f"seed {seed!r} is not in this record (seeds {self.seeds})")
        return self.results[str(seed)]

    def per_seed(self) -> list[tuple[int, Any]]:
        """``[(seed, results), ...]`` in the order of ``seeds``."""
        return [(s, self.results[str(s)]) for s in self.seeds]

    def to_dict(self) -> dict[str, Any]:
        """A plain dict (JSON-ready)."""
        return json_ready(dataclasses.asdict(self))

    def save(self, path: str | os.PathLike) -> Path:
        """Write the record as indented JSON (creating the folder); return the path."""
        return _write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: Any, *, source: str = "experiment record") -> ExperimentRecord:
        """Rebuild a record from a parsed JSON object, raising ValueError that names the missing or malformed field."""
        if not isinstance(d, dict):
            raise ValueError(f"{source}: an experiment record is a JSON object, got {type(d).__name__}")
        if d.get("schema") != EXPERIMENT_SCHEMA:
            raise ValueError(f"{source}: schema is {d.get('schema')!r}, expected {EXPERIMENT_SCHEMA!r}")
        names = [f.name for f in dataclasses.fields(cls)]
        missing = [n for n in names if n not in d]
        if missing:
            raise ValueError(f"{source}: missing fields {missing}")
        unknown = sorted(set(d) - set(names))
        if unknown:
            raise ValueError(f"{source}: unknown fields {unknown}")
        record = cls.__new__(cls)
        for n in names:
            setattr(record, n, d[n])
        record.validate(source)
        return record

    @classmethod
    def create(
        cls,
        name: str,
        config: dict[str, Any],
        seeds: Iterable[int],
        results: dict[int, Any] | dict[str, Any],
        *,
        device: dict[str, str] | None = None,
    ) -> ExperimentRecord:
        """A record stamped with this machine, the code version and the time now.

        ``results`` may be keyed by the integer seeds; ``device`` defaults to :func:`cpu_device`.
        ``config`` and ``results`` are passed through :func:`json_ready`.
        """
        return cls(
            name=name,
            config=json_ready(config),
            code_version=code_version(),
            machine=machine_info(),
            device=dict(device) if device is not None else cpu_device(),
            seeds=[int(s) for s in seeds],
            results={str(k): json_ready(v) for k, v in results.items()},
            created_utc=now_utc(),
        )


def load_experiment(path: str | os.PathLike) -> ExperimentRecord:
    """Read one experiment record written by :meth:`ExperimentRecord.save`."""
    return ExperimentRecord.from_dict(read_json(path), source=str(path))


def load_experiments(folder: str | os.PathLike, name: str | None = None) -> list[ExperimentRecord]:
    """Every experiment record (``*.json``, schema ``"bnref.experiment/1"``) in a folder, sorted by file name.

    Parameters
    ----------
    folder : path
        A missing folder gives an empty list.
    name : str, optional
        Keep only records of this experiment.

    Files of other schemas (run records, benchmark outputs) are passed over; a file that is not
    valid JSON, or claims the experiment schema and is malformed, raises ValueError naming it.
    """
    records = [
        ExperimentRecord.from_dict(d, source=str(p)) for p, d in _json_files_with_schema(folder, EXPERIMENT_SCHEMA)
    ]
    return [r for r in records if name is None or r.name == name]


# --------------------------------------------------------------------------------------------
# the machine, the code, the time
# --------------------------------------------------------------------------------------------


def cpu_name() -> str:
    """The CPU model (from /proc/cpuinfo on Linux, else ``platform.processor()``) and logical CPU count."""
    model = ""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as f:
            for line in f:
                if line.lower().startswith("model name"):
                    model = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    model = model or platform.processor() or platform.machine() or "unknown CPU"
    return f"{model} ({os.cpu_count()} logical CPUs)"


def cpu_device() -> dict[str, str]:
    """``{"type": "cpu", "name": cpu_name()}``: the device field of a record computed on the CPU."""
    return {"type": "cpu", "name": cpu_name()}


def device_slug(device: dict[str, str] | str) -> str:
    """A short file-name tag for a device: ``"cpu"`` for any CPU, else the GPU's name in lower case
    without the vendor, e.g. ``{"type": "cuda", "name": "NVIDIA H200"}`` -> ``"h200"``,
    ``"NVIDIA GeForce RTX 4090"`` -> ``"geforce-rtx-4090"``. Used to name records after the GPU.
    """
    if isinstance(device, dict):
        if device.get("type") == "cpu":
            return "cpu"
        name = str(device.get("name", ""))
    else:
        name = str(device)
    words = re.sub(r"[^a-z0-9]+", " ", name.lower()).split()
    words = [w for w in words if w not in ("nvidia", "amd", "intel", "corporation", "tm", "r")]
    if not words:
        raise ValueError(f"cannot make a file-name tag from the device name {name!r}")
    return "-".join(words)


def machine_info() -> dict[str, Any]:
    """Facts about the machine that matter for timings; deliberately no hostname or user name."""
    return {
        "os": f"{platform.system()} {platform.release()}",
        "arch": platform.machine(),
        "cpu": cpu_name(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "numpy": np.__version__,
    }


def now_utc() -> str:
    """The time now in UTC, ISO 8601 to the second (``"2026-11-30T05:40:00+00:00"``)."""
    return _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds")


def code_version() -> str:
    """The git commit of the working tree that holds this package, ``"<sha>+dirty"`` if it has
    uncommitted changes to tracked files, or ``"unknown"`` when that cannot be told (no git, or
    ``bnref`` installed outside a repository). Never raises.
    """
    here = Path(__file__).resolve().parent

    def git(*args: str) -> str:
        return subprocess.run(
            ["git", "-C", str(here), *args], capture_output=True, text=True, timeout=10, check=True
        ).stdout.strip()

    try:
        # Only a package whose own file git tracks speaks for the repository around it (an
        # installed copy inside an ignored virtual environment would not).
        git("ls-files", "--error-unmatch", Path(__file__).name)
        sha = git("rev-parse", "HEAD")
        dirty = bool(git("status", "--porcelain", "--untracked-files=no"))
    except Exception:  # no git, not a repository, not tracked, timeout: the version is unknown
        return "unknown"
    return f"{sha}+dirty" if dirty else sha


class DirtyTreeError(RuntimeError):
    """A record would name a commit whose code is not what ran: the working tree has uncommitted changes."""


def require_clean_tree(allow_dirty: bool = False) -> str:
    """The code version a record about to be written will carry; refuse a dirty tree unless told otherwise.

    A record names the commit that made it (:func:`code_version`). From a working tree with uncommitted changes
    to tracked files that commit is not the code that ran, so the commands that write records call this first
    and stop. ``allow_dirty=True`` (their ``--allow-dirty`` flag) lets a trial run go on; its record is marked by
    the ``"+dirty"`` ending of its code version, and ``tests/test_records.py`` fails on any such record committed
    to ``book/results``. ``"unknown"`` (no git, or an installed copy outside a repository) is let through: it
    claims no commit.

    Raises
    ------
    DirtyTreeError
        The tree is dirty and ``allow_dirty`` is false. The message names the flag.
    """
    version = code_version()
    if version.endswith("+dirty") and not allow_dirty:
        raise DirtyTreeError(
            f"the working tree has uncommitted changes (code version {version}); a record must name the commit "
            "that made it. Commit first and run from the clean tree (or a clean clone), or pass --allow-dirty "
            "for a trial run whose record is marked '+dirty' and must not be committed."
        )
    return version


def add_allow_dirty_argument(parser: argparse.ArgumentParser) -> None:
    """The ``--allow-dirty`` flag of every command that writes records (read by :func:`refuse_dirty_tree`)."""
    parser.add_argument(
        "--allow-dirty",
        action="store_true",
        help="write records from a tree with uncommitted changes (a trial: their code version ends in +dirty "
        "and a test refuses them in book/results)",
    )


def refuse_dirty_tree(allow_dirty: bool) -> int:
    """A command's exit status before it writes records: 0 when it may, else 2 after printing why to stderr
    (:func:`require_clean_tree`)."""
    try:
        require_clean_tree(allow_dirty)
    except DirtyTreeError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


#: Modules that moved when the package was split into layers (commit 5ee3ea0): old dotted name -> new one. Records
#: written before the move name the old modules in their descriptive config strings; they stay as written (a record
#: says what ran), and :func:`with_current_module_names` maps them when a record is compared with its definition.
MOVED_MODULES: dict[str, str] = {
    "bnref.distributed.SyncBatchNorm": "bnref.layers.sync_bn.SyncBatchNorm",
    "bnref.torch_bn": "bnref.layers.torch_bn",
    "bnref.keras_bn": "bnref.layers.keras_bn",
    "bnref.jax_bn": "bnref.layers.jax_bn",
    "bnref.transfer": "bnref.layers.transfer",
    "bnref.precise_bn": "bnref.layers.precise_bn",
    "bnref.agreement": "bnref.check.agreement",
    "bnref.precision": "bnref.check.precision",
    "bnref.conformance_adapters": "bnref.check.adapters",
    "bnref.data": "bnref.mnist.data",
    "bnref.models": "bnref.mnist.models",
    "bnref.training": "bnref.mnist.training",
    "bnref.torch_training": "bnref.mnist.torch_training",
    "bnref.keras_training": "bnref.mnist.keras_training",
    "bnref.experiments": "bnref.experiments.probes",
    "bnref.claims": "bnref.experiments.claims",
    "bnref.dynamics": "bnref.experiments.dynamics",
    "bnref.beyond": "bnref.experiments.beyond",
    "bnref.distributed": "bnref.experiments.distributed",
}


def with_current_module_names(value: Any) -> Any:
    """``value`` (a record's config: nested dicts, lists, strings) with every moved module named as it is now.

    Only whole dotted names of :data:`MOVED_MODULES` are replaced, in one pass (``bnref.models.initial_weights`` ->
    ``bnref.mnist.models.initial_weights``), so a config written after the move comes back unchanged.
    """
    if isinstance(value, str):
        return MOVED_PATTERN.sub(lambda m: MOVED_MODULES[m.group(0)], value)
    if isinstance(value, dict):
        return {k: with_current_module_names(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return type(value)(with_current_module_names(v) for v in value)
    return value


#: An old module name as a whole dotted name; ``bnref.experiments`` only where it is not already the package of
#: one of its new modules (``bnref.experiments.claims`` stays).
MOVED_PATTERN = re.compile(
    r"\bbnref\.(?:"
    + "|".join(re.escape(old[len("bnref.") :]) for old in sorted(MOVED_MODULES, key=len, reverse=True))
    + r")\b(?!\.(?:probes|claims|dynamics|beyond|distributed|survey|registry|cli|launcher|flax_sync)\b)"
)

"""One registry of the book's experiments: declare an experiment once; get, run, load, check and the command line
come from the declaration.

An :class:`Experiment` is the declaration: a name (also the name of its records), what it tests, a one-line summary,
the full configuration (JSON-ready, written into every record unchanged), the seeds of the full run, the runner and
the file name of its records. A :class:`Registry` holds the experiments of one or more chapters in named groups and
serves them by name: :meth:`~Registry.get` the definition, :meth:`~Registry.run` it over its seeds into a record,
:meth:`~Registry.load` the committed record, :meth:`~Registry.check` that a record is what its definition produces,
and :meth:`~Registry.main`, the command line. Each chapter module declares its group
(:mod:`bnref.experiments.claims`, :mod:`~bnref.experiments.dynamics`, :mod:`~bnref.experiments.beyond`,
:mod:`~bnref.experiments.distributed`); :mod:`bnref.experiments.cli` joins them into one command line::

    python -m bnref.experiments list [GROUP]
    python -m bnref.experiments show NAME
    python -m bnref.experiments run NAME|GROUP|all [...] [--seeds N] [--device cpu|cuda|cuda:N] --out DIR
    python -m bnref.experiments check [DIR]

A chapter module run with ``python -m`` (``python -m bnref.experiments.dynamics run all --out DIR``) has the same
command line over its own group. PyTorch is imported only to run an experiment; declaring, loading and checking
records need NumPy only.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib
import json
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from bnref.mnist.data import mnist_features
from bnref.records import (
    ExperimentRecord,
    add_allow_dirty_argument,
    device_slug,
    json_ready,
    load_experiments,
    refuse_dirty_tree,
    with_current_module_names,
)

__all__ = ["Data", "Experiment", "Registry"]

#: ``(x_train, y_train, x_test, y_test)``: float32 features ``(n, 784)`` and int64 labels.
Data = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]


@dataclasses.dataclass(frozen=True)
class Experiment:
    """One experiment of the book, declared once.

    Attributes
    ----------
    name : str
        The experiment's name and its records' (``"claims-lr-sweep"``).
    claims : str
        What it tests: the article's claims by the claims chapter's numbering, or the chapter and section.
    summary : str
        One sentence: what is run and what is measured.
    config : dict
        The full configuration, JSON-ready; written into the record unchanged.
    seeds : tuple of int
        The seeds of the full run. Each seed draws its own training subset (where there is one),
        initial weights and batch order; the models compared under one seed share all three.
    runner : callable
        ``runner(config, seed, device, data) -> dict``: the results of one seed (JSON-ready after
        :func:`bnref.records.json_ready`); with ``all_seeds``, ``runner(config, seeds, device, data) -> {seed: dict}``.
    record_file : str
        The file name of its records, with ``{name}`` and ``{device}`` (:func:`bnref.records.device_slug`) to fill in.
    all_seeds : bool
        The runner takes every seed at once (e.g. to start its processes once).
    versions : tuple of str
        Packages whose ``__version__`` the record's config carries under the package's name (``"torch"``); they
        describe the run, not the definition, so :meth:`check` leaves them out.
    """

    name: str
    claims: str
    summary: str
    config: dict[str, Any]
    seeds: tuple[int, ...]
    runner: Callable[..., Any]
    record_file: str = "{name}.{device}.json"
    all_seeds: bool = False
    versions: tuple[str, ...] = ()

    def record_filename(self, device: dict[str, str]) -> str:
        """The file name of a record made on ``device``: ``"claims-cost.cpu.json"``, ``"claims-cost.h200.json"``."""
        return self.record_file.format(name=self.name, device=device_slug(device))

    def run(
        self,
        *,
        seeds: Sequence[int] | None = None,
        device: str = "cpu",
        overrides: dict[str, Any] | None = None,
        out: str | Path | None = None,
        data: Data | None = None,
    ) -> ExperimentRecord:
        """Run the experiment over its seeds and return (and optionally write) its record.

        Parameters
        ----------
        seeds : sequence of int, optional
            Default: the experiment's own seeds.
        device : str
            ``"cpu"``, ``"cuda"``, ``"cuda:N"`` (checked by :func:`bnref.mnist.torch_training.select_device`). On the
            CPU, PyTorch runs on one thread during the experiment (restored afterwards): these networks are
            too small to gain from more, and one thread gives the same numbers whatever the core count.
        overrides : dict, optional
            Configuration entries to replace, for a reduced run (e.g. fewer learning rates). The record
            then carries the changed configuration.
        out : path, optional
            A folder: the record is written there as :meth:`record_filename`.
        data : (x_train, y_train, x_test, y_test), optional
            Float32 features ``(n, 784)`` and int64 labels. Default: MNIST
            (:func:`bnref.mnist.data.mnist_features`). Tests pass a small synthetic set.
        """
        import torch

        from bnref.mnist.torch_training import device_name, select_device

        config = dict(self.config)
        for key, value in (overrides or {}).items():
            if key not in config:
                raise ValueError(f"{self.name} has no configuration entry {key!r} to override; it has {sorted(config)}")
            config[key] = value
        seeds = list(self.seeds if seeds is None else seeds)
        if not seeds or not all(isinstance(s, (int, np.integer)) and s >= 0 for s in seeds):
            raise ValueError(f"seeds must be a non-empty list of non-negative integers; got {seeds!r}")
        seeds = [int(s) for s in seeds]
        dev = select_device(device)
        threads = torch.get_num_threads()
        if dev.type == "cpu":
            torch.set_num_threads(1)
        try:
            data = mnist_features() if data is None else data
            if self.all_seeds:
                results = self.runner(config, seeds, dev, data)
            else:
                results = {s: self.runner(config, s, dev, data) for s in seeds}
        finally:
            torch.set_num_threads(threads)
        config.update({package: importlib.import_module(package).__version__ for package in self.versions})
        record = ExperimentRecord.create(
            self.name, config, seeds, results, device={"type": dev.type, "name": device_name(dev)}
        )
        if out is not None:
            record.save(Path(out) / self.record_filename(record.device))
        return record

    def load(self, folder: str | Path, device_type: str = "cpu") -> ExperimentRecord:
        """The one record of this experiment made on a device of ``device_type`` in ``folder`` (ValueError if
        there is not exactly one)."""
        found = [r for r in load_experiments(folder, self.name) if r.device["type"] == device_type]
        if len(found) != 1:
            raise ValueError(f"expected one {device_type} record of {self.name!r} in {folder}; found {len(found)}")
        return found[0]

    def check(self, record: ExperimentRecord) -> None:
        """Raise ValueError unless ``record`` is what this definition produces.

        The names must agree; the record's ``config`` (module names as they are now,
        :func:`bnref.records.with_current_module_names`; :attr:`versions` left out) must equal the definition's
        after a JSON round trip, and its seeds must be the first ``k >= 3`` of the definition's seeds (a GPU record
        may be made with fewer seeds than the CPU record; at least 3 stand behind any verdict). The error names
        the entries that differ.
        """
        if record.name != self.name:
            raise ValueError(f"the record is of {record.name!r}, the definition of {self.name!r}")
        missing = [k for k in self.versions if k not in record.config]
        if missing:
            raise ValueError(f"{record.name}: the record's config lacks the versions of {missing}")
        expected = json_ready(self.config)
        config = {k: v for k, v in with_current_module_names(record.config).items() if k not in self.versions}
        if config != expected:
            keys = sorted(k for k in set(expected) | set(config) if config.get(k) != expected.get(k))
            raise ValueError(
                f"{record.name}: the record's config differs from its definition at {keys}; "
                f"run the experiment again (python -m bnref.experiments run {record.name} ...) "
                "or restore the definition"
            )
        n = len(record.seeds)
        if n < 3 or record.seeds != list(self.seeds[:n]):
            raise ValueError(
                f"{record.name}: the record's seeds {record.seeds} are not the first k >= 3 "
                f"of the definition's {list(self.seeds)}"
            )


class Registry:
    """Experiments in named groups, served by name, with their command line.

    Parameters
    ----------
    groups : mapping of str to sequence of Experiment
        ``{"claims": [...]}``; names must be unique across groups.
    module : str
        The module whose ``python -m`` runs :meth:`main` (its ``prog``).
    """

    def __init__(self, groups: Mapping[str, Sequence[Experiment]], *, module: str = "bnref.experiments") -> None:
        self.module = module
        self.groups: dict[str, list[str]] = {}
        self.experiments: dict[str, Experiment] = {}
        for group, experiments in groups.items():
            self.groups[group] = [e.name for e in experiments]
            for e in experiments:
                if e.name in self.experiments or e.name in groups or e.name == "all":
                    raise ValueError(f"experiment name {e.name!r} is used twice")
                self.experiments[e.name] = e

    @classmethod
    def joined(cls, *registries: Registry, module: str = "bnref.experiments") -> Registry:
        """One registry holding every group of ``registries``."""
        pairs = [(g, [r.experiments[n] for n in names]) for r in registries for g, names in r.groups.items()]
        groups = dict(pairs)
        if len(groups) != len(pairs):
            raise ValueError(f"a group name is used twice in {[g for g, _ in pairs]}")
        return cls(groups, module=module)

    def group_of(self, name: str) -> str:
        """The group an experiment belongs to."""
        return next(g for g, names in self.groups.items() if self.get(name).name in names)

    def get(self, name: str) -> Experiment:
        """The definition of one experiment (ValueError naming the known ones if there is none)."""
        if name not in self.experiments:
            raise ValueError(f"unknown experiment {name!r}; known: {sorted(self.experiments)}")
        return self.experiments[name]

    def names(self, name: str) -> list[str]:
        """The experiments a name stands for: ``"all"``, a group (``"claims"``) or one experiment."""
        if name == "all":
            return list(self.experiments)
        if name in self.groups:
            return list(self.groups[name])
        if name in self.experiments:
            return [name]
        raise ValueError(
            f"unknown experiment {name!r}; known: all, groups {sorted(self.groups)}, "
            f"experiments {sorted(self.experiments)}"
        )

    def run(self, name: str, **options: Any) -> ExperimentRecord:
        """Run one experiment by name: :meth:`Experiment.run` with the same keyword options (``seeds``, ``device``,
        ``overrides``, ``out``, ``data``)."""
        return self.get(name).run(**options)

    def load(self, name: str, folder: str | Path, device_type: str = "cpu") -> ExperimentRecord:
        """The one record of ``name`` made on a device of ``device_type`` in ``folder`` (:meth:`Experiment.load`)."""
        return self.get(name).load(folder, device_type)

    def check(self, record: ExperimentRecord) -> None:
        """Raise ValueError unless ``record`` is what its experiment's definition produces
        (:meth:`Experiment.check`)."""
        self.get(record.name).check(record)

    # ----------------------------------------------------------------------------------------
    # the command line
    # ----------------------------------------------------------------------------------------

    def parser(self) -> argparse.ArgumentParser:
        """The argument parser of :meth:`main`."""
        parser = argparse.ArgumentParser(
            prog=f"python -m {self.module}",
            description=f"The experiments of {', '.join(self.groups)}: list, show, run them, or check their records.",
        )
        sub = parser.add_subparsers(dest="command", required=True)
        listing = sub.add_parser("list", help="the groups and their experiments")
        listing.add_argument("group", nargs="?", choices=list(self.groups), help="only this group")
        show = sub.add_parser("show", help="one experiment's definition: summary, seeds, record file, configuration")
        show.add_argument("name")
        run = sub.add_parser("run", help="run experiments over their seeds and write one record each")
        run.add_argument("names", nargs="+", metavar="NAME", help="an experiment, a group, or all")
        run.add_argument("--seeds", type=int, default=None, help="run the first N of each experiment's seeds")
        run.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
        run.add_argument("--out", required=True, help="folder for the records (created if missing)")
        add_allow_dirty_argument(run)
        check = sub.add_parser("check", help="check every record in a folder against its definition")
        check.add_argument("folder", nargs="?", default="book/results", help="default: %(default)s")
        return parser

    def main(self, argv: Sequence[str] | None = None) -> int:
        """The command line: ``list [GROUP]``, ``show NAME``, ``run NAME|GROUP|all ... [--seeds N] [--device D]
        --out DIR [--allow-dirty]`` and ``check [DIR]``. Returns the exit status; ``run`` refuses a working tree with
        uncommitted changes (exit 2, :func:`bnref.records.require_clean_tree`) unless ``--allow-dirty``."""
        parser = self.parser()
        args = parser.parse_args(argv)
        if args.command == "list":
            self._print_list(args.group)
            return 0
        if args.command == "show":
            try:
                self._print_definition(self.get(args.name))
            except ValueError as e:
                parser.error(str(e))
            return 0
        if args.command == "check":
            return self._check_folder(args.folder)
        try:
            names = list(dict.fromkeys(n for name in args.names for n in self.names(name)))
            if args.seeds is not None and args.seeds < 1:
                raise ValueError(f"--seeds must be a positive integer; got {args.seeds}")
        except ValueError as e:
            parser.error(str(e))
        if refuse_dirty_tree(args.allow_dirty):
            return 2
        for name in names:
            exp = self.get(name)
            t0 = time.perf_counter()
            record = exp.run(seeds=exp.seeds[: args.seeds], device=args.device, out=args.out)
            path = Path(args.out) / exp.record_filename(record.device)
            print(
                f"{name}: {len(record.seeds)} seeds on {record.device['name']} in {time.perf_counter() - t0:.0f} s "
                f"-> {path}",
                flush=True,
            )
        return 0

    def _print_list(self, group: str | None) -> None:
        for g, names in self.groups.items():
            if group in (None, g):
                print(f"group {g}: {' '.join(names)}")
        for g, names in self.groups.items():
            for name in names if group in (None, g) else []:
                e = self.experiments[name]
                print(f"{name:22s} {e.claims:13s} {len(e.seeds)} seeds: {e.summary}")

    def _print_definition(self, exp: Experiment) -> None:
        print(f"name:    {exp.name} (group {self.group_of(exp.name)})")
        print(f"tests:   {exp.claims}")
        print(f"summary: {exp.summary}")
        print(f"seeds:   {' '.join(map(str, exp.seeds))}")
        print(f"record:  {exp.record_file.format(name=exp.name, device='<cpu|gpu>')}")
        print("config:  " + json.dumps(json_ready(exp.config), indent=2).replace("\n", "\n         "))

    def _check_folder(self, folder: str) -> int:
        records = [r for r in load_experiments(folder) if r.name in self.experiments]
        failed = 0
        for record in records:
            try:
                self.check(record)
            except ValueError as e:
                failed += 1
                print(f"FAIL {record.name} ({record.device['name']}): {e}")
            else:
                print(f"ok   {record.name} ({record.device['name']}, seeds {record.seeds})")
        for name in sorted(set(self.experiments) - {r.name for r in records}):
            print(f"none {name}: no record in {folder}")
        return 1 if failed else 0

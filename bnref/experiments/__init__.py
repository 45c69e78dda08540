"""The book's experiments: each declared once (configuration, seeds, runner, record name) in one registry
(:mod:`bnref.experiments.registry`) and run by ``python -m bnref.experiments`` into JSON records
(:mod:`bnref.experiments.cli`). The top layer: it may import everything below it.

* :mod:`~bnref.experiments.registry`: :class:`~bnref.experiments.registry.Experiment` and
  :class:`~bnref.experiments.registry.Registry` (get, run, load, check, the command line);
* :mod:`~bnref.experiments.claims`, :mod:`~bnref.experiments.dynamics`, :mod:`~bnref.experiments.placement`,
  :mod:`~bnref.experiments.normfree`, :mod:`~bnref.experiments.recalibration`, :mod:`~bnref.experiments.beyond`,
  :mod:`~bnref.experiments.sequences`, :mod:`~bnref.experiments.distributed`: the chapters' experiments, one group
  each;
* :mod:`~bnref.experiments.diagnostics`: training diagnostics to point at any PyTorch model (saturated and dead units,
  update-to-data ratios, activation and gradient histograms);
* :mod:`~bnref.experiments.probes`: measuring helpers behind them (gradient norms, SGD runs, sweeps, timings);
* :mod:`~bnref.experiments.launcher`: run a function on several gloo processes and count their collectives;
* :mod:`~bnref.experiments.flax_sync`: Flax's synchronised BN, measured in its own process;
* :mod:`~bnref.experiments.cli`: the one command line.
"""

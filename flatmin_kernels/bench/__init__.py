"""The benchmark engine behind ``python -m flatmin_kernels bench``.

One module per concept: ``param_lists`` (the shapes), ``timing`` (clocks and interleaved
repetitions), ``machine`` (what ran where), ``ops_suite`` / ``steps_suite`` / ``host_suite``
(what is measured), ``contenders`` (ours and torch's optimizers; the peers live in the
checkout's ``bench/peers``), ``probes`` (held memory, peak memory, launches), ``targets``,
``report`` (tables, JSON) and ``plots``. ``runner`` ties them together.
"""

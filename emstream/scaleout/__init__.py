"""Scale-out: re-analyse recorded frames on a dask.distributed cluster (``emstream reprocess``).

The data path: :mod:`~emstream.scaleout.plan` lists what to read (files, stack slices) in
acquisition order, skipping what the session's ledger already holds; :mod:`~emstream.scaleout.worker`
is what runs on each dask worker (the model arrives once per worker as a ``WorkerPlugin``; each
task reads its file and returns the frame's terminal record); :mod:`~emstream.scaleout.source`
submits the tasks with a bound on those in flight and hands the records back, in order, to the
ordinary :class:`~emstream.pipeline.Pipeline`, whose single thread does what must be sequential
(drift, tracking, frame state, rules) and whose ledger is the one writer. The output is the same
kind of session as a live one.

dask is imported only inside this package (an import-linter contract says so).
"""

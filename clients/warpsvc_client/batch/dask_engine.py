"""``--engine dask``: the per-image work on a Dask cluster.

The unit of work is :func:`process_image`, a pure function of (input URL, output URL, job spec)
returning the image's :class:`~.record.Record`: it reads the input beneath INPUT, computes with
the in-process library on the worker, and writes the output atomically itself (a temporary file
renamed into place, or one atomic PUT on an object store). The client only submits, gathers and
writes the manifest as results arrive, so the manifest stays the single source of truth.

* Cluster: an embedded ``LocalCluster`` (``--jobs`` workers, default one per core; one thread,
  one OpenCV thread and one BLAS thread each, as the pool's processes), or an existing scheduler
  (``--scheduler tcp://host:8786``: its workers must reach INPUT and OUTPUT under the same names,
  e.g. object storage or a shared file system).
* A worker killed mid-image: Dask reruns the task on another worker (up to the scheduler's
  ``allowed-failures``); the killed try left at most a temporary file of this run (deleted at the
  end of the run) and no partial output, since outputs appear only by rename or atomic PUT. A
  task that kills workers past that limit is recorded as failed (``KilledWorker``). The record's
  ``attempts`` counts the tries made by the worker that finished (a rerun after a worker death
  is not visible to the task itself).
* The spec (options, reference image) is scattered to every worker once; at most
  ``4 x workers`` images are in flight, so a huge folder does not flood the scheduler.
* The summary's rate counts from the first submission (the cluster is up), as the pool's counts
  from its start; an embedded ``LocalCluster`` costs another ~2-4 s of start-up before that.
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass

from .jobs import JobSpec, Task, process
from .paths import MissingDependencyError
from .record import Record

_ENGINES: dict = {}


@dataclass(frozen=True)
class DaskOptions:
    scheduler: str | None = None   # tcp://host:port, or None for an embedded LocalCluster
    workers: int = 0               # LocalCluster workers (0: one per core)
    deadline: float | None = 600.0  # seconds per image (stops an alignment's iterations)


def _under(root: str, rel: str) -> str:
    """``rel`` under the folder URL ``root``, one ``/`` between them whether ``root`` ends in one
    or not (``scans/`` as every doc example writes it: ``scans//a.png`` came back from
    :func:`_relative` as the absolute ``/a.png`` and every image failed)."""
    return root.rstrip("/") + "/" + rel


def _relative(url: str, store, what: str) -> str:
    root = store.url.rstrip("/") + "/"
    if not url.startswith(root):
        raise ValueError(f"{what} {url!r} is not under {store.url!r}")
    return url[len(root):]


def _local_engine(max_pixels: int):
    """One library engine per worker process, with one OpenCV and one BLAS thread."""
    if max_pixels not in _ENGINES:
        from .backends import LocalEngine, one_thread_per_process

        one_thread_per_process()
        _ENGINES[max_pixels] = LocalEngine(max_pixels)
    return _ENGINES[max_pixels]


def process_image(input_url: str, output_url: str, spec: JobSpec, transform=None,
                  deadline: float | None = None) -> Record:
    """One image, start to finish, on whichever worker runs it: (input URL, output URL, spec)
    -> record. ``transform`` overrides the spec's (``--transforms`` files)."""
    task = Task(0, _relative(input_url, spec.inputs, "input"), _relative(output_url, spec.outputs, "output"),
                transform)
    return process(task, spec, _local_engine(spec.max_pixels), deadline)


def _client(opts: DaskOptions):
    try:
        from distributed import Client, LocalCluster
    except ImportError:
        raise MissingDependencyError("--engine dask needs dask.distributed: pip install 'warpsvc[dask]'") from None
    if opts.scheduler:
        return Client(opts.scheduler), None
    n = opts.workers or os.cpu_count() or 1
    cluster = LocalCluster(n_workers=n, threads_per_worker=1, processes=True, host="127.0.0.1",
                           dashboard_address=None, silence_logs=40)
    return Client(cluster), cluster


def run(tasks: list[Task], spec: JobSpec, opts: DaskOptions, record, counts, dirsync) -> None:
    """Submit every task; ``record(rec) -> rec`` as each result arrives (in this thread), after
    noting the output's folder for ``dirsync`` (made durable before the manifest is)."""
    client, cluster = _client(opts)
    from distributed import as_completed

    start = time.monotonic()  # the rate is the work's: the cluster's start-up (~2-4 s) is not in it
    try:
        workers = max(1, len(client.scheduler_info().get("workers", {})) or opts.workers or 1)
        spec_future = client.scatter(spec, broadcast=True)
        queue = list(reversed(tasks))
        owner = {}
        pending = as_completed()

        def submit(task):
            fut = client.submit(process_image, _under(spec.inputs.url, task.input), _under(spec.outputs.url, task.output),
                                spec_future, task.transform, opts.deadline, pure=False)
            owner[fut.key] = task
            pending.add(fut)

        for _ in range(min(len(queue), 4 * workers)):
            submit(queue.pop())
        for fut in pending:
            task = owner.pop(fut.key)
            try:
                rec = fut.result()
            except Exception as err:  # noqa: BLE001 - KilledWorker and the like: the image failed
                rec = Record(input=task.input, output=task.output, job=spec.job, target="dask",
                             error=f"{type(err).__name__}: {err}", attempts=1)
            if rec.ok:
                dirsync.add(rec.output)
            counts.add(record(rec.replace(target="dask")))
            fut.release()
            if queue:
                submit(queue.pop())
    finally:
        counts.elapsed = time.monotonic() - start
        client.close()
        if cluster is not None:
            cluster.close()

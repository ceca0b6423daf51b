"""Run the tasks: a bounded window of work, records appended as images finish, progress, summary.

* gRPC targets: a thread pool of ``inflight + io`` threads runs :func:`.jobs.compute`; the
  engine's semaphore keeps at most ``inflight`` RPCs outstanding while the other threads read
  input files (file I/O and OpenCV release the GIL), so disk work overlaps the RPCs.
* ``local``: a process pool (``jobs`` processes, each with one OpenCV and one BLAS thread) runs the same
  function with the in-process library; at most ``2 * jobs`` tasks are queued.
* Either way 4 writer threads of this process finish each output (:func:`.jobs.store`: temp
  file, fsync, rename), off the compute path; pool processes write the temporary file
  themselves (no pickling of the bytes back). A worker that
  dies (a crash in native code) breaks the pool: its pending tasks are re-run in a fresh pool,
  and a task present at two breakdowns is recorded as failed (``attempts`` 2: two tries).
* ``record(rec)`` (the manifest) is called in this thread as each image finishes and returns
  the record as recorded: when the manifest write fails (``ENOSPC``) the image counts as failed
  (its output is not recorded, so ``--resume`` redoes it) and the run goes on.
* Traces (``OTEL_TRACES_EXPORTER``, :mod:`warpsvc_client.tracing`): started in the process
  that computes -- this one for gRPC targets, each pool process for ``local`` (after the fork,
  flushed when it exits) -- so every image's work is a span; off, nothing is imported.
"""

from __future__ import annotations

import concurrent.futures as cf
import multiprocessing
import multiprocessing.util
import os
import threading
import time
from dataclasses import dataclass, field

from .. import tracing
from . import jobs as jobs_mod
from .files import DirSync
from .record import Record


@dataclass
class Counts:
    total: int = 0
    ok: int = 0
    failed: int = 0
    skipped: int = 0
    unconverged: int = 0
    elapsed: float = 0.0
    failures: list = field(default_factory=list)
    noted: list = field(default_factory=list)  # ok records with notes (jobs.input_notes)
    sync_failed: bool = False     # the manifest's final fsync failed (records may not be durable)

    @property
    def done(self) -> int:
        return self.ok + self.failed

    def add(self, rec: Record) -> None:
        if rec.ok:
            self.ok += 1
            self.unconverged += rec.unconverged
            if rec.notes:
                self.noted.append(rec)
        else:
            self.failed += 1
            self.failures.append(rec)

    def rate(self) -> float:
        return self.done / self.elapsed if self.elapsed > 0 else 0.0


@dataclass
class RunOptions:
    inflight: int = 4            # gRPC: outstanding RPCs
    jobs: int = 0                # local: processes (0: os.cpu_count())
    deadline: float | None = 600.0
    progress: bool = True


def _progress_bar(total: int, enabled: bool, desc: str):
    from tqdm import tqdm

    # disable=None: tqdm turns itself off when stderr is not a terminal (logs stay clean)
    return tqdm(total=total, unit="img", desc=desc, disable=True if not enabled else None, dynamic_ncols=True,
                smoothing=0.05, mininterval=0.5)


# -- local process pool ----------------------------------------------------------------------------
_WORKER: dict = {}


def _init_worker(spec, deadline, parent_pid) -> None:
    from .backends import LocalEngine, one_thread_per_process

    one_thread_per_process()
    _WORKER.update(spec=spec, deadline=deadline, engine=LocalEngine(spec.max_pixels))
    traces = tracing.start_batch()
    if traces.enabled:  # flush at the worker's exit (multiprocessing runs these; atexit it does not)
        multiprocessing.util.Finalize(None, traces.shutdown, exitpriority=10)

    def watchdog():  # the parent was killed (SIGKILL): stop instead of writing on as an orphan
        while True:
            time.sleep(0.2)
            if os.getppid() != parent_pid:
                os._exit(1)

    threading.Thread(target=watchdog, daemon=True).start()


def _compute_local_task(task):
    return jobs_mod.compute(task, _WORKER["spec"], _WORKER["engine"], _WORKER["deadline"], stage=True)


def _pool_context():
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def local_processes(jobs: int) -> int:
    return jobs if jobs > 0 else (os.cpu_count() or 1)


# -- the loop --------------------------------------------------------------------------------------
def run(tasks, spec, engine, opts: RunOptions, record, counts: Counts, dirsync: DirSync) -> Counts:
    """Process every task; ``record(rec) -> rec`` is called in this thread as each one finishes.

    Two stages: *compute* (read, compute, encode: the process pool, or threads making RPCs) and
    *store* (atomic write with fsync: a few threads of this process), so a slow disk never
    idles a core or an RPC slot. ``window`` bounds the images held in either stage.
    """
    tasks = list(tasks)
    bar = None
    start = time.monotonic()

    def finished(rec: Record):
        if rec.ok:
            dirsync.add(rec.output)
        counts.add(record(rec))
        if not rec.ok:
            bar.set_postfix_str(f"failed={counts.failed}", refresh=False)
        bar.update(1)

    local = engine is None
    if local:
        n = local_processes(opts.jobs)
        make = lambda: cf.ProcessPoolExecutor(n, mp_context=_pool_context(), initializer=_init_worker,  # noqa: E731
                                              initargs=(spec, opts.deadline, os.getpid()))
        fn, slots = _compute_local_task, 2 * n
    else:
        n = engine.inflight + max(2, engine.inflight // 2)
        make = lambda: cf.ThreadPoolExecutor(n, thread_name_prefix="warpsvc-batch")  # noqa: E731
        fn = lambda t: jobs_mod.compute(t, spec, engine, opts.deadline)  # noqa: E731
        slots = n
    executor = make()  # before any other thread exists here (the pool forks)
    traces = tracing.BatchTracing() if local else tracing.start_batch()  # local: in each pool process
    writers = cf.ThreadPoolExecutor(4, thread_name_prefix="warpsvc-batch-write")
    window = 2 * slots
    bar = _progress_bar(len(tasks), opts.progress, spec.job)
    crashes: dict[int, int] = {}
    queue = list(reversed(tasks))
    computing: dict = {}
    storing: dict = {}
    try:
        while queue or computing or storing:
            while queue and len(computing) < slots and len(computing) + len(storing) < window:
                task = queue.pop()
                computing[executor.submit(fn, task)] = task
            done, _ = cf.wait(list(computing) + list(storing), return_when=cf.FIRST_COMPLETED)
            broken = []
            for fut in done:
                if fut in storing:
                    storing.pop(fut)
                    finished(fut.result())
                    continue
                task = computing.pop(fut)
                try:
                    rec, out = fut.result()
                except cf.process.BrokenProcessPool:
                    broken.append(task)
                    continue
                if out is None:
                    finished(rec)
                else:
                    storing[writers.submit(jobs_mod.store, rec, out, spec)] = task
            if broken:  # a worker died: retry everything it took down, once
                broken += list(computing.values())
                computing.clear()
                executor.shutdown(wait=False, cancel_futures=True)
                executor = make()
                for task in broken:
                    crashes[task.index] = crashes.get(task.index, 0) + 1
                    if crashes[task.index] >= 2:
                        finished(_crash_record(task, spec))
                    else:
                        queue.append(task)
    finally:
        counts.elapsed = time.monotonic() - start
        executor.shutdown(wait=True, cancel_futures=True)
        writers.shutdown(wait=True)
        bar.close()
        traces.shutdown()
    return counts


def _crash_record(task, spec) -> Record:
    return Record(input=task.input, output=task.output, job=spec.job, target="local", attempts=2,
                  error="BrokenProcessPool: the worker process died twice while this image was in progress")

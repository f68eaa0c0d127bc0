"""The `local` backend: the Azure ML entry script in a process pool on this machine.

Same contract as Azure ML's parallel runners: each worker process calls `scoring_job.score.init()`
once (it loads the model pack once) with the arguments the platform would pass, then scores lists of partition
paths with `score.score_mini_batch` — `run(mini_batch)` plus the "error" rows of failed partitions, which
run() leaves out so that Azure ML counts them as failed items. Paths are real files: the folder store's own
files, or a staging folder downloaded from (and uploaded back to) Azurite / Azure Storage.

A worker whose `init()` fails (a tampered or edited pack: `PackError`) keeps the exception and raises it for every
mini-batch, so the run fails with the real cause (`PackError: svm-000.npz: SHA-256 or size mismatch ...`) instead
of the `BrokenProcessPool` an initializer's exception leaves; the pool stops the export at the first such error.
"""

from __future__ import annotations

import logging
import multiprocessing
import sys
import tempfile
import threading
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path
from typing import Any

import pandas as pd

from fleetscore.backends.base import Submission, SubmitRequest
from fleetscore.storage.base import BlobStore
from scoring_job import _kernels, score

log = logging.getLogger(__name__)

PROJECT_PACKAGES = ("fleetscore", "scoring_job", "functions", "function_app")


def forkserver_preload() -> list[str]:
    """What the forkserver imports once so that no worker it forks imports it again: this module (the workers run
    its functions), `warm_kernels` (the numba kernels compiled once in the server, not in every worker) and every
    project module the parent has loaded. Each forkserver child runs the parent's main script again as `__mp_main__`
    (multiprocessing's rule), and the `fleetscore` script imports the whole CLI: about a second per worker unless
    its modules are already in the server."""
    return [__name__, "fleetscore.backends.warm_kernels",
            *sorted(m for m in sys.modules if m.split(".")[0] in PROJECT_PACKAGES)]


def _pool_context() -> multiprocessing.context.BaseContext:
    """How workers start. `fork` when this process has a single thread (the CLI, the demo): instant, and
    the scoring code is already imported. With other threads running (the local host), forking could
    copy a lock some thread holds, so `forkserver`: a clean single-threaded server, started once per
    process with the scoring code preloaded, forks the workers. `spawn` elsewhere (Windows, macOS)."""
    methods = multiprocessing.get_all_start_methods()
    if "fork" in methods and threading.active_count() == 1:
        return multiprocessing.get_context("fork")
    if "forkserver" in methods:
        ctx = multiprocessing.get_context("forkserver")
        ctx.set_forkserver_preload(forkserver_preload())
        return ctx
    return multiprocessing.get_context("spawn")


_INIT_ERROR: Exception | None = None
"""This worker's `score.init()` failure, raised by every mini-batch it is given."""


def _init_worker(argv: list[str]) -> None:
    """`score.init(argv)`; its exception is kept for the mini-batches: one raised here would only break the pool
    (`BrokenProcessPool`), its message left on the worker's stderr."""
    global _INIT_ERROR
    try:
        score.init(argv)
    except Exception as exc:  # noqa: BLE001 - carried to the parent by _run_batch
        _INIT_ERROR = exc


def _started() -> None:
    """The pool's first task: its workers start at once (and load the pack while the run's export is still reading);
    raises the worker's init failure."""
    if _INIT_ERROR is not None:
        raise _INIT_ERROR


def _run_batch(paths: list[str]) -> list[dict]:
    """Every item's result row, failed partitions' "error" rows included (run() drops them for Azure ML's failure
    count; here their reasons go into the run's record); raises the worker's init failure."""
    if _INIT_ERROR is not None:
        raise _INIT_ERROR
    return score.score_mini_batch(paths).to_dict("records")


class PartitionPool:
    """The entry script in `workers` processes, fed one partition path per mini-batch as they become
    available (the run exports partitions while earlier ones are already being scored)."""

    def __init__(self, model_pack: Path, output: Path, run_id: str, *, workers: int, dtype: str = "float64",
                 progress: Callable[[int, int], None] | None = None, model_sha256: str | None = None) -> None:
        output.mkdir(parents=True, exist_ok=True)
        score.remove_stale_temp_files(output)  # a killed earlier attempt's; this run's lease holder owns the folder
        argv = ["--model_pack", str(model_pack), "--output", str(output), "--run_id", run_id, "--dtype", dtype]
        if model_sha256:
            argv += ["--model_pack_sha256", model_sha256]
        context = _pool_context()
        if context.get_start_method() == "fork":
            _kernels.warm()  # once per process: forked workers inherit the compiled kernels
        self._pool = ProcessPoolExecutor(max_workers=max(1, workers), mp_context=context,
                                         initializer=_init_worker, initargs=(argv,))
        self._started = self._pool.submit(_started)  # forks now, before the export's threads start
        self._futures: list = []
        self._progress = progress

    def add(self, partition: Path) -> None:
        """Queue a partition; raises the failure of the first mini-batch (a worker's init error) once it is known,
        so that the run stops exporting."""
        if self._started.done() and self._started.exception() is not None:
            self._pool.shutdown(cancel_futures=True)
            raise self._started.exception()
        self._futures.append(self._pool.submit(_run_batch, [str(partition)]))

    def results(self) -> pd.DataFrame:
        """Wait for every partition; the entry script's result rows (one per partition), by partition."""
        rows: list[dict] = []
        try:
            for done, future in enumerate(as_completed(self._futures), start=1):
                rows.extend(future.result())
                if self._progress:
                    self._progress(done, len(self._futures))
        finally:
            self._pool.shutdown(cancel_futures=True)
        return pd.DataFrame(rows).sort_values("partition", kind="stable").reset_index(drop=True)

    def cancel(self) -> None:
        self._pool.shutdown(cancel_futures=True)


def score_partitions(partitions: list[Path], model_pack: Path, output: Path, run_id: str, *, workers: int,
                     dtype: str = "float64", progress: Callable[[int, int], None] | None = None,
                     model_sha256: str | None = None) -> pd.DataFrame:
    """Score partition files with the entry script in `workers` processes, one partition per mini-batch, the pack
    pinned to ``model_sha256`` (its manifest's SHA-256) when given.

    Returns the entry script's result rows (one per partition) in partition order.
    """
    pool = PartitionPool(model_pack, output, run_id, workers=min(workers, max(1, len(partitions))), dtype=dtype,
                         progress=progress, model_sha256=model_sha256)
    for path in partitions:
        pool.add(path)
    return pool.results()


Progress = Callable[[str, int, int], None]
"""`progress(stage, done, total)`: the CLI's per-stage progress bars."""


class LocalBackend:
    """`SCORING_BACKEND=local`: scores in this process's pool while `submit` waits, and returns what it wrote;
    the run service then indexes those files, as the blob trigger would have."""

    in_process = True

    def __init__(self, settings: Any, store: BlobStore, progress: Progress | None = None) -> None:
        self.settings = settings
        self.store = store
        self.progress = progress
        self.results: pd.DataFrame | None = None
        self._feed: PartitionPool | None = None

    def _tick(self) -> Callable[[int, int], None] | None:
        return (lambda d, t: self.progress("score", d, t)) if self.progress else None

    def open_feed(self, req: SubmitRequest) -> _KeyFeed | None:
        """Score partitions while the run is still exporting them (stores with local files only);
        None when the store needs staging."""
        store, settings = self.store, self.settings
        pack_dir, out_dir = store.local_path(req.model_pack_path), store.local_path(req.output_path)
        if store.local_path(req.data_path) is None or pack_dir is None or out_dir is None:
            return None
        self._feed = PartitionPool(pack_dir, out_dir, req.run_id, workers=settings.workers,
                                   dtype=settings.scoring_dtype, progress=self._tick(), model_sha256=req.model_sha256)
        return _KeyFeed(self._feed, store)

    def submit(self, req: SubmitRequest) -> Submission:
        if self._feed is not None:  # partitions were fed while the run exported them
            feed, self._feed = self._feed, None
            self.results = feed.results()
        else:
            self.results = self._score_whole(req)
        return self._submission(req)

    def cancel(self) -> None:
        if self._feed is not None:
            self._feed.cancel()
            self._feed = None

    def _score_whole(self, req: SubmitRequest) -> pd.DataFrame:
        """Score the request's partitions in place (folder store) or staged through a temp folder."""
        settings, store = self.settings, self.store
        names = list(req.partitions)
        data_dir, pack_dir = store.local_path(req.data_path), store.local_path(req.model_pack_path)
        out_dir = store.local_path(req.output_path)
        if data_dir is not None and pack_dir is not None and out_dir is not None:
            return score_partitions([data_dir / n for n in names], pack_dir, out_dir, req.run_id,
                                    workers=settings.workers, dtype=settings.scoring_dtype, progress=self._tick(),
                                    model_sha256=req.model_sha256)
        with tempfile.TemporaryDirectory(prefix=f"fleetscore-{req.run_id}-") as tmp:  # Azurite / Azure Storage
            root = Path(tmp)
            store.download_prefix(req.model_pack_path, root / "pack")
            (root / "data").mkdir()
            for n in names:
                (root / "data" / n).write_bytes(store.get(f"{req.data_path}/{n}"))
            results = score_partitions([root / "data" / n for n in names], root / "pack", root / "out",
                                       req.run_id, workers=settings.workers, dtype=settings.scoring_dtype,
                                       progress=self._tick(), model_sha256=req.model_sha256)
            store.upload_dir(root / "out", req.output_path)
        return results

    def _submission(self, req: SubmitRequest) -> Submission:
        failed = self.results["status"] == "error"
        bad = self.results[failed]
        if len(bad):
            log.warning("run %s: %d partition(s) could not be scored: %s", req.run_id, len(bad),
                        "; ".join(f"{r.partition}: {r.error}" for r in bad.itertuples()))
        scored = self.results["status"].isin(("ok", "partial"))
        written = [f"{req.output_path}/{n}" for n in sorted(self.results.loc[scored, "partition"])]
        return Submission(f"local:{req.run_id}", in_process=True, written=written,
                          unscored=dict(zip(bad["partition"], bad["error"], strict=True)))


class _KeyFeed:
    """A :class:`PartitionPool` fed with store keys (the export's), scored from the folder store's files."""

    def __init__(self, pool: PartitionPool, store: BlobStore) -> None:
        self._pool, self._store = pool, store

    def add(self, key: str) -> None:
        self._pool.add(self._store.local_path(key))

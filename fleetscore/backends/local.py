"""The `local` backend: the Azure ML entry script in a process pool on this machine.

Same contract as Azure ML's parallel runners: each worker process calls `scoring_job.score.init()`
once (it loads the model pack once) with the arguments the platform would pass, then `run(mini_batch)`
with lists of partition paths. Paths are real files: the folder store's own files, or a staging folder
downloaded from (and uploaded back to) Azurite / Azure Storage.
"""

from __future__ import annotations

import logging
import multiprocessing
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

from fleetscore.backends import SubmitRequest

log = logging.getLogger(__name__)


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
        ctx.set_forkserver_preload(["scoring_job.score"])
        return ctx
    return multiprocessing.get_context("spawn")


def _init_worker(argv: list[str]) -> None:
    from scoring_job import score

    score.init(argv)


def _run_batch(paths: list[str]) -> list[dict]:
    from scoring_job import score

    return score.run(paths).to_dict("records")


class PartitionPool:
    """The entry script in `workers` processes, fed one partition path per mini-batch as they become
    available (the run exports partitions while earlier ones are already being scored)."""

    def __init__(self, model_pack: Path, output: Path, run_id: str, *, workers: int, dtype: str = "float64",
                 progress: Callable[[int, int], None] | None = None) -> None:
        output.mkdir(parents=True, exist_ok=True)
        argv = ["--model_pack", str(model_pack), "--output", str(output), "--run_id", run_id, "--dtype", dtype]
        self._pool = ProcessPoolExecutor(max_workers=max(1, workers), mp_context=_pool_context(),
                                         initializer=_init_worker, initargs=(argv,))
        self._futures: list = []
        self._progress = progress

    def add(self, partition: Path) -> None:
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
                     dtype: str = "float64", progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Score partition files with the entry script in `workers` processes, one partition per mini-batch.

    Returns the entry script's result rows (one per partition) in partition order.
    """
    pool = PartitionPool(model_pack, output, run_id, workers=min(workers, max(1, len(partitions))), dtype=dtype,
                         progress=progress)
    for path in partitions:
        pool.add(path)
    return pool.results()


class LocalBackend:
    """`SCORING_BACKEND=local`: scores synchronously in `submit`, then `after_submit` indexes the files
    it wrote, as the blob trigger would have."""

    def __init__(self, services, progress: Callable[[str, int, int], None] | None = None) -> None:
        self.services = services
        self.progress = progress
        self.results: pd.DataFrame | None = None
        self.written: list[str] = []
        self._feed: PartitionPool | None = None

    def open_feed(self, req: SubmitRequest) -> PartitionPool | None:
        """Score partitions while the run is still exporting them (stores with local files only);
        None when the store needs staging."""
        store, settings = self.services.store, self.services.settings
        pack_dir, out_dir = store.local_path(req.model_pack_path), store.local_path(req.output_path)
        if store.local_path(req.data_path) is None or pack_dir is None or out_dir is None:
            return None
        tick = (lambda d, t: self.progress("score", d, t)) if self.progress else None
        self._feed = PartitionPool(pack_dir, out_dir, req.run_id, workers=settings.workers,
                                   dtype=settings.scoring_dtype, progress=tick)
        return self._feed

    def submit(self, req: SubmitRequest) -> str:
        settings, store = self.services.settings, self.services.store
        if self._feed is not None:  # partitions were fed while the run exported them
            feed, self._feed = self._feed, None
            self.results = feed.results()
            return self._finish(req)
        engine = self.services.engine
        from fleetscore.runs import read_manifest, update_run

        manifest = read_manifest(store, req.run_id)
        if manifest is None:
            raise RuntimeError(f"run {req.run_id} has no manifest in {store.describe()}")
        update_run(engine, req.run_id, status="running")
        tick = (lambda d, t: self.progress("score", d, t)) if self.progress else None
        names = [p.name for p in manifest.partitions]
        data_dir = store.local_path(req.data_path)
        pack_dir = store.local_path(req.model_pack_path)
        out_dir = store.local_path(req.output_path)
        if data_dir is not None and pack_dir is not None and out_dir is not None:
            self.results = score_partitions([data_dir / n for n in names], pack_dir, out_dir, req.run_id,
                                            workers=settings.workers, dtype=settings.scoring_dtype, progress=tick)
        else:  # Azurite / Azure Storage: stage in, score, stage out
            with tempfile.TemporaryDirectory(prefix=f"fleetscore-{req.run_id}-") as tmp:
                root = Path(tmp)
                store.download_prefix(req.model_pack_path, root / "pack")
                for n in names:
                    (root / "data").mkdir(exist_ok=True)
                    (root / "data" / n).write_bytes(store.get(f"{req.data_path}/{n}"))
                self.results = score_partitions([root / "data" / n for n in names], root / "pack", root / "out",
                                                req.run_id, workers=settings.workers,
                                                dtype=settings.scoring_dtype, progress=tick)
                store.upload_dir(root / "out", req.output_path)
        return self._finish(req)

    def _finish(self, req: SubmitRequest) -> str:
        scored = self.results.loc[self.results["status"] != "error", "partition"]
        self.written = [f"{req.output_path}/{n}" for n in sorted(scored)]
        bad = self.results[self.results["status"] == "error"]
        if len(bad):
            log.warning("run %s: %d partition(s) could not be scored: %s", req.run_id, len(bad),
                        "; ".join(f"{r.partition}: {r.error}" for r in bad.itertuples()))
        return f"local:{req.run_id}"

    def after_submit(self, run_id: str) -> dict[str, float]:
        """Index every prediction file this run wrote (the blob trigger's job in Azure)."""
        from fleetscore.index import index_prediction_file
        from fleetscore.runs import mark_unscored_partitions

        t0 = time.perf_counter()
        svc = self.services
        for i, name in enumerate(self.written, start=1):
            index_prediction_file(svc.engine, svc.store, svc.settings, name)
            if self.progress:
                self.progress("index", i, len(self.written))
        bad = self.results[self.results["status"] == "error"] if self.results is not None else None
        if bad is not None and len(bad):
            mark_unscored_partitions(svc.engine, run_id, dict(zip(bad["partition"], bad["error"], strict=True)),
                                     all_failed=len(bad) == len(self.results))
        return {"index": round(time.perf_counter() - t0, 3)}

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
import time
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor, as_completed
from pathlib import Path

import pandas as pd

from fleetscore.backends import SubmitRequest

log = logging.getLogger(__name__)


def _pool_context() -> multiprocessing.context.BaseContext:
    """forkserver where available: workers start from a clean, single-threaded server that has imported
    the scoring code once (fork from a process with threads is unsafe; spawn re-imports every time)."""
    if "forkserver" in multiprocessing.get_all_start_methods():
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


def score_partitions(partitions: list[Path], model_pack: Path, output: Path, run_id: str, *, workers: int,
                     dtype: str = "float64", progress: Callable[[int, int], None] | None = None) -> pd.DataFrame:
    """Score partition files with the entry script in `workers` processes, one partition per mini-batch.

    Returns the entry script's result rows (one per partition) in partition order.
    """
    output.mkdir(parents=True, exist_ok=True)
    argv = ["--model_pack", str(model_pack), "--output", str(output), "--run_id", run_id, "--dtype", dtype]
    rows: list[dict] = []
    workers = max(1, min(workers, len(partitions)))
    with ProcessPoolExecutor(max_workers=workers, mp_context=_pool_context(), initializer=_init_worker,
                             initargs=(argv,)) as pool:
        futures = [pool.submit(_run_batch, [str(p)]) for p in partitions]
        for done, future in enumerate(as_completed(futures), start=1):
            rows.extend(future.result())
            if progress:
                progress(done, len(futures))
    return pd.DataFrame(rows).sort_values("partition", kind="stable").reset_index(drop=True)


class LocalBackend:
    """`SCORING_BACKEND=local`: scores synchronously in `submit`, then `after_submit` indexes the files
    it wrote, as the blob trigger would have."""

    def __init__(self, services, progress: Callable[[str, int, int], None] | None = None) -> None:
        self.services = services
        self.progress = progress
        self.results: pd.DataFrame | None = None
        self.written: list[str] = []

    def submit(self, req: SubmitRequest) -> str:
        settings, store = self.services.settings, self.services.store
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
        self.written = [f"{req.output_path}/{n}" for n in names
                        if n in set(self.results.loc[self.results["status"] != "error", "partition"])]
        bad = self.results[self.results["status"] == "error"]
        if len(bad):
            log.warning("run %s: %d partition(s) could not be scored: %s", req.run_id, len(bad),
                        "; ".join(f"{r.partition}: {r.error}" for r in bad.itertuples()))
        return f"local:{req.run_id}"

    def after_submit(self, run_id: str) -> dict[str, float]:
        """Index every prediction file this run wrote (the blob trigger's job in Azure)."""
        from fleetscore.index import index_prediction_file
        from fleetscore.runs import TERMINAL, mark_unscored_partitions

        t0 = time.perf_counter()
        svc = self.services
        for i, name in enumerate(self.written, start=1):
            index_prediction_file(svc.engine, svc.store, svc.settings, name)
            if self.progress:
                self.progress("index", i, len(self.written))
        bad = self.results[self.results["status"] == "error"] if self.results is not None else None
        if bad is not None and len(bad):
            mark_unscored_partitions(svc.engine, run_id, dict(zip(bad["partition"], bad["error"], strict=True)),
                                     all_failed=len(bad) == len(self.results), skip_if=TERMINAL)
        return {"index": round(time.perf_counter() - t0, 3)}

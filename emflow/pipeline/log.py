"""Logging, progress and numba-cache set-up for workflow scripts.

Every ``workflow/scripts/*.py`` starts with::

    from emflow.pipeline.log import setup_logging
    log = setup_logging(snakemake)

This module must be imported before anything that imports numba: it points
``NUMBA_CACHE_DIR`` at a private per-job folder seeded from the shared cache
(``.snakemake/numba_cache``), and copies newly compiled files back under an exclusive
lock when the job ends. Concurrent jobs therefore never write one cache at the same
time (numba#4807) yet each kernel is compiled once per workflow, not once per job.
"""

from __future__ import annotations

import atexit
import fcntl
import logging
import os
import pathlib
import shutil
import sys
import tempfile
import time
from collections.abc import Callable

SHARED_CACHE = pathlib.Path(os.environ.get("EMFLOW_SHARED_NUMBA_CACHE", ".snakemake/numba_cache"))


def _sync_cache(src: pathlib.Path, dst: pathlib.Path) -> None:
    """Copy files of ``src`` missing or newer than in ``dst``; each file lands atomically."""
    for path in src.rglob("*"):
        if not path.is_file():
            continue
        target = dst / path.relative_to(src)
        if target.exists() and target.stat().st_mtime >= path.stat().st_mtime:
            continue
        target.parent.mkdir(parents=True, exist_ok=True)
        tmp = target.with_name(f".{target.name}.{os.getpid()}.tmp")
        shutil.copy2(path, tmp)
        os.replace(tmp, target)


def private_numba_cache(shared: pathlib.Path = SHARED_CACHE) -> pathlib.Path | None:
    """Give this process a private ``NUMBA_CACHE_DIR`` seeded from ``shared``.

    Returns the private folder, or ``None`` when numba is already imported (too late to
    redirect its cache) or the user set ``NUMBA_CACHE_DIR`` explicitly.
    """
    if "numba" in sys.modules or "NUMBA_CACHE_DIR" in os.environ:
        return None
    shared = shared.resolve()
    shared.mkdir(parents=True, exist_ok=True)
    private = pathlib.Path(tempfile.mkdtemp(prefix="emflow-numba-"))
    lock_path = shared / ".lock"
    with open(lock_path, "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_SH)
        _sync_cache(shared, private)
        fcntl.flock(lock, fcntl.LOCK_UN)
    os.environ["NUMBA_CACHE_DIR"] = str(private)

    def publish() -> None:
        with open(lock_path, "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            _sync_cache(private, shared)
            fcntl.flock(lock, fcntl.LOCK_UN)
        shutil.rmtree(private, ignore_errors=True)

    atexit.register(publish)
    return private


def setup_logging(smk=None, level: int = logging.INFO) -> logging.Logger:
    """Send ``logging`` to the rule's log file and limit numba threads to the rule's threads.

    Parameters
    ----------
    smk : snakemake.script.Snakemake, optional
        The ``snakemake`` object of a ``script:`` rule. Without it, logs go to stderr.
    """
    private_numba_cache()
    handlers: list[logging.Handler] = [logging.StreamHandler(sys.stderr)]
    name = "emflow"
    if smk is not None:
        name = f"emflow.{smk.rule}"
        if len(smk.log) > 0:
            pathlib.Path(smk.log[0]).parent.mkdir(parents=True, exist_ok=True)
            handlers = [logging.FileHandler(smk.log[0], mode="w")]
    logging.basicConfig(
        level=level,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        handlers=handlers,
        force=True,
    )
    log = logging.getLogger(name)
    if smk is not None:
        from emflow._numba import set_threads

        set_threads(smk.threads)
        os.environ.setdefault("OMP_NUM_THREADS", str(smk.threads))
        log.info("rule %s, wildcards %s, %d thread(s)", smk.rule, dict(smk.wildcards), smk.threads)
        _log_uncaught_exceptions(log)
        if not _PEAK_RSS_LOGGERS:  # once per process (tests run several scripts in one)
            atexit.register(_log_peak_rss)
        _PEAK_RSS_LOGGERS[:] = [log]
    return log


_PEAK_RSS_LOGGERS: list[logging.Logger] = []


def _log_peak_rss() -> None:
    """Log this job's peak resident memory (``VmHWM``): Snakemake's benchmark ``max_rss`` is sampled
    and misses short peaks; ``emflow.pipeline.resources`` is fitted to this line. At interpreter exit a
    console stream may already be closed: that must not print a logging traceback."""
    raise_exceptions, logging.raiseExceptions = logging.raiseExceptions, False
    try:
        for line in pathlib.Path("/proc/self/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                for log in _PEAK_RSS_LOGGERS:
                    log.info("job peak RSS (VmHWM) %.0f MB", int(line.split()[1]) / 1024.0)
    except OSError:
        pass
    finally:
        logging.raiseExceptions = raise_exceptions


def _log_uncaught_exceptions(log: logging.Logger) -> None:
    """Write the error that ends a script into its log file too (Snakemake only shows it on the console).

    Bad input (:class:`~emflow.errors.InputError`) is logged as its message alone, which names the file
    or key and the fix; anything else with its traceback.
    """
    previous = sys.excepthook

    def hook(exc_type, exc, tb):
        from emflow.errors import InputError

        if issubclass(exc_type, InputError):
            log.error("bad input: %s", exc)
        else:
            log.error("%s: %s", exc_type.__name__, exc, exc_info=(exc_type, exc, tb))
        previous(exc_type, exc, tb)

    sys.excepthook = hook


def progress_logger(
    log: logging.Logger, label: str, total: float, every_s: float = 5.0
) -> Callable[[float], None]:
    """Return ``cb(done)`` that logs ``label``'s fraction done, rate and ETA.

    Lines are written at most every ``every_s`` seconds, plus one at completion, so a user
    tailing the rule's log can tell the job is alive without the log growing large.
    """
    start = time.monotonic()
    last = [start - every_s]

    def callback(done: float) -> None:
        now = time.monotonic()
        if now - last[0] < every_s and done < total:
            return
        last[0] = now
        elapsed = now - start
        rate = done / elapsed if elapsed > 0 else 0.0
        eta = (total - done) / rate if rate > 0 else float("inf")
        frac = done / total if total else 1.0
        log.info("%s: %5.1f%% (%g/%g), %.3g/s, ETA %.0f s", label, 100 * frac, done, total, rate, eta)

    return callback

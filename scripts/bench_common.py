"""Shared timing helpers for the ``scripts/bench_*.py`` benchmarks.

Timings on a shared machine drift with the load of other processes, so the benchmarks
never time one side and then the other: :func:`interleaved` runs the candidates in
alternating order, one call each per round, and reports per candidate the median
time and the median over rounds of its time divided by the reference's time *in the
same round* (both saw about the same load).
"""

from __future__ import annotations

import os
import statistics
import time

__all__ = ["interleaved", "setup_threads", "machine_line", "peak_rss_mib", "load_line", "one_line_error"]


def setup_threads(threads: int, pin: int = 0):
    """torch intra-op threads; with ``pin``, restrict the process to its first ``pin`` CPUs.

    XLA's CPU client sizes its thread pool from the CPUs it may run on, so pinning (before jax
    is imported) is the way to give both libraries the same cores.  On a machine shared with
    other jobs, torch with 2 OpenMP threads waits at every parallel region's barrier for a
    descheduled thread (a ResNetTiny forward took 150-220 ms instead of 4 ms at load average
    7 on 2 cores); ``--threads 1 --pin 1`` gives a load-insensitive single-core comparison.
    """
    if pin:
        cpus = sorted(os.sched_getaffinity(0))[:pin]
        os.sched_setaffinity(0, cpus)
    import torch

    torch.set_num_threads(threads)


def interleaved(fns: dict, repeat: int, reference: str, warmup: int = 2):
    """Time ``fns`` (name -> zero-argument callable that blocks until done), interleaved.

    Returns ``{name: (median seconds, median ratio to reference, min seconds)}``; the ratio of
    the minima is a second, load-insensitive estimate (the fastest round saw the least load).
    """
    names = list(fns)
    for _ in range(warmup):
        for nm in names:
            fns[nm]()
    times = {nm: [] for nm in names}
    for r in range(repeat):
        order = names if r % 2 == 0 else names[::-1]
        for nm in order:
            t = time.perf_counter()
            fns[nm]()
            times[nm].append(time.perf_counter() - t)
    ref = times[reference]
    return {nm: (statistics.median(ts), statistics.median(t / rt for t, rt in zip(ts, ref)), min(ts))
            for nm, ts in times.items()}


def machine_line(threads: int, engines: str = "fbgemm") -> str:
    import jax
    import torch

    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    return (f"jax {jax.__version__} ({jax.devices()[0].platform}), torch {torch.__version__} {engines}, "
            f"torch threads {threads}, CPUs usable {len(os.sched_getaffinity(0))} of {os.cpu_count()}, "
            f"load average {load:.2f} at start")


def peak_rss_mib() -> float:
    """This process's peak resident set size (``ru_maxrss``) in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def load_line(when: str = "") -> str:
    """``uptime``'s load averages (1, 5, 15 min) and the time, to print next to a measurement."""
    one, five, fifteen = os.getloadavg() if hasattr(os, "getloadavg") else (float("nan"),) * 3
    stamp = time.strftime("%H:%M:%S UTC", time.gmtime())
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} {when} ({stamp}, {os.cpu_count()} CPUs)".replace("  ", " ")


def one_line_error(e: BaseException, limit: int = 200) -> str:
    """``Type: message`` on one line (the first line of the message), cut to ``limit`` characters."""
    msg = str(e).strip().splitlines()
    text = f"{type(e).__name__}: {msg[0] if msg else ''}".replace("|", "/")
    return text if len(text) <= limit else text[: limit - 1] + "…"

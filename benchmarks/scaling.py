"""Memory and time of ``wsi-deepr refocus`` against slide area (not a timed test).

For each size (default 5000², 10000², 20000², 40000²) a synthetic tiled JPEG
slide is made once (band by band, kept in ``--workdir`` for later runs) and
refocused with a tiny 3-conv ONNX model by the real CLI in a fresh process:

* seconds: wall time of the whole command (start-up, statistics, tiles,
  pyramid, OME-TIFF write);
* peak RSS: with ``--scheduler threads`` the command's own ``ru_maxrss``
  (from ``wait4``); with the default LocalCluster the peak of the *sum* of
  the RSS of the command and all its worker processes, sampled every 0.2 s.

Memory must stay flat (≤ 2 GiB at 40000²) and time grow linearly with area:
the table gives seconds per megapixel and a least-squares fit
``seconds = a + b * Mpx``.

Usage::

    python benchmarks/scaling.py                                  # 4 sizes, threads and LocalCluster
    python benchmarks/scaling.py --sizes 2000 4000 --schedulers threads
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent


def _throughput():
    spec = importlib.util.spec_from_file_location("wsi_deepr_bench_throughput", HERE / "throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def ensure_slide(workdir: Path, size: int) -> Path:
    """The synthetic slide of ``size``², made once and kept."""
    path = workdir / f"synthetic_{size}.ome.tif"
    if not path.exists():
        from wsi_deepr.writers.atomic import atomic_file

        t = time.perf_counter()
        with atomic_file(path, "wb") as fh:  # a killed run leaves no half-written slide to reuse
            _throughput().make_synthetic_slide(fh, size)
        print(f"  made {path.name} ({path.stat().st_size / 2**20:.0f} MiB) in {time.perf_counter() - t:.0f} s",
              flush=True)
    return path


def ensure_model(workdir: Path) -> Path:
    from wsi_deepr.testing import conv_model, default_card, save_model

    path = workdir / "tiny_conv3.onnx"
    if not path.exists():
        save_model(conv_model(depth=3, card=default_card(halo=8)), path)
    return path


class TreeRss:
    """Peak of the summed RSS of a process and its descendants, sampled in a thread."""

    def __init__(self, pid: int, interval: float = 0.2) -> None:
        import psutil

        self.root = psutil.Process(pid)
        self.peak = 0
        self.interval = interval
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            total = 0
            try:
                procs = [self.root, *self.root.children(recursive=True)]
            except psutil.NoSuchProcess:
                return
            for proc in procs:
                try:
                    total += proc.memory_info().rss
                except psutil.NoSuchProcess:
                    pass
            self.peak = max(self.peak, total)
            self._stop.wait(self.interval)

    def stop(self) -> int:
        self._stop.set()
        self._thread.join()
        return self.peak


def run_one(slide: Path, model: Path, out: Path, scheduler: str, extra: list[str]) -> dict:
    """One CLI run in a fresh process: seconds, ru_maxrss, peak tree RSS."""
    cmd = [sys.executable, "-c", "import sys; from wsi_deepr.cli import main; sys.exit(main(sys.argv[1:]))",
           "refocus", str(slide), "-o", str(out), "--model", str(model), "--device", "cpu", "--where", "all", "--overwrite",
           "-q", "--scheduler", scheduler, *extra]
    log = out.with_name("stderr.txt")
    t = time.perf_counter()
    with open(log, "w") as fh:
        proc = subprocess.Popen(cmd, stderr=fh)
        sampler = TreeRss(proc.pid)
        _, status, usage = os.wait4(proc.pid, 0)
    seconds = time.perf_counter() - t
    tree_peak = sampler.stop()
    proc.returncode = os.waitstatus_to_exitcode(status)
    err = log.read_text()
    if proc.returncode != 0:
        raise SystemExit(f"refocus failed ({proc.returncode}):\n{err[-3000:]}")
    from wsi_deepr.runsafe.provenance import sidecar_path

    record = json.loads(sidecar_path(out).read_text())
    out.unlink()
    sidecar_path(out).unlink()
    return {"seconds": seconds, "ru_maxrss_mib": usage.ru_maxrss / 1024, "tree_rss_mib": tree_peak / 2**20,
            "windows": record["windows"], "stages": record["timings"]}


def fit(xs: list[float], ys: list[float]) -> tuple[float, float, float]:
    """Least squares ``y = a + b x``; return ``a, b, R²``."""
    n = len(xs)
    mx, my = sum(xs) / n, sum(ys) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    b = sum((x - mx) * (y - my) for x, y in zip(xs, ys, strict=True)) / sxx
    a = my - b * mx
    ss_res = sum((y - a - b * x) ** 2 for x, y in zip(xs, ys, strict=True))
    ss_tot = sum((y - my) ** 2 for y in ys)
    return a, b, 1 - ss_res / ss_tot if ss_tot else 1.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[5000, 10000, 20000, 40000])
    parser.add_argument("--schedulers", nargs="+", default=["threads", "local"], choices=["threads", "local"])
    parser.add_argument("--workdir", type=Path, default=Path("/tmp/wd/scaling"))
    parser.add_argument("--json", type=Path, help="also write the records here")
    parser.add_argument("extra", nargs="*", help="more refocus options (after --)")
    args = parser.parse_args()
    args.workdir.mkdir(parents=True, exist_ok=True)
    model = ensure_model(args.workdir)
    print(f"tiny 3-conv model, tile 512, {os.cpu_count()} CPUs; slides in {args.workdir}", flush=True)
    slides = {n: ensure_slide(args.workdir, n) for n in args.sizes}
    records = []
    for scheduler in args.schedulers:
        print(f"\nscheduler {scheduler}")
        print(f"{'size':>12} {'Mpx':>7} {'windows':>8} {'seconds':>8} {'s/Mpx':>7} {'ru_maxrss MiB':>13} "
              f"{'tree RSS MiB':>12}", flush=True)
        rows = []
        for n in args.sizes:
            r = run_one(slides[n], model, args.workdir / "out.ome.tif", scheduler, args.extra)
            r.update(size=n, mpx=n * n / 1e6, scheduler=scheduler)
            rows.append(r)
            print(f"{f'{n}x{n}':>12} {r['mpx']:7.0f} {r['windows']:8d} {r['seconds']:8.1f} "
                  f"{r['seconds'] / r['mpx']:7.4f} {r['ru_maxrss_mib']:13.0f} {r['tree_rss_mib']:12.0f}",
                  flush=True)
        if len(rows) >= 2:
            a, b, r2 = fit([r["mpx"] for r in rows], [r["seconds"] for r in rows])
            print(f"fit: seconds = {a:.1f} + {b:.4f} * Mpx  (R² = {r2:.4f}); "
                  f"s/Mpx largest/smallest = {rows[-1]['seconds'] / rows[-1]['mpx']:.4f} / "
                  f"{rows[0]['seconds'] / rows[0]['mpx']:.4f}", flush=True)
        records += rows
    if args.json:
        args.json.write_text(json.dumps(records, indent=2))


if __name__ == "__main__":
    main()

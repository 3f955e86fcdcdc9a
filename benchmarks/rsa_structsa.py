"""Forward time and peak memory of rsa and structsa next to joint and divided (CPU, fp32, batch 1).

Every measurement runs in a fresh subprocess, so its peak is its own: ``peak_mem_mb`` is the
child's peak RSS minus its RSS once torch and vattn are imported (weights, input and
activations of an inference forward). A watchdog kills a child whose RSS passes
``--max-mem-gb`` and reports the row as ``killed``.

    PYTHONPATH=. python benchmarks/rsa_structsa.py                      # base, 8 and 32 frames
    PYTHONPATH=. python benchmarks/rsa_structsa.py --frames 8 --repeats 3 --warmup 1
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def rss_mb(pid: int | str = "self") -> float:
    """Current resident set size of a process (Linux ``/proc``)."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return 0.0


def child(args: argparse.Namespace) -> None:
    """One measurement: build the model, time ``repeats`` forwards, print one JSON line."""
    import resource

    import torch

    from vattn_cli.zoo import create_model

    torch.set_num_threads(args.threads)
    baseline = rss_mb()
    torch.manual_seed(0)
    model = create_model(args.scheme, size=args.size, frames=args.frames, img_size=args.img_size).eval()
    weights_mb = sum(p.numel() * p.element_size() for p in model.parameters()) / 2**20
    video = torch.randn(1, 3, args.frames, args.img_size, args.img_size)
    times = []
    with torch.inference_mode():
        for i in range(args.warmup + args.repeats):
            start = time.perf_counter()
            model(video)
            if i >= args.warmup:
                times.append(time.perf_counter() - start)
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux
    print(json.dumps({
        "forward_s": statistics.median(times), "peak_mem_mb": peak - baseline, "weights_mb": weights_mb,
        "params_m": sum(p.numel() for p in model.parameters()) / 1e6,
    }))


def measure(scheme: str, frames: int, args: argparse.Namespace) -> dict:
    """Run one child under the RSS watchdog; its JSON result, or a status saying why not."""
    cmd = [sys.executable, __file__, "--child", "--scheme", scheme, "--frames", str(frames),
           "--size", args.size, "--img-size", str(args.img_size), "--threads", str(args.threads),
           "--warmup", str(args.warmup), "--repeats", str(args.repeats)]
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [os.getcwd(), os.environ.get("PYTHONPATH")])))
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    limit = args.max_mem_gb * 1024
    while proc.poll() is None:
        try:
            if rss_mb(proc.pid) > limit:
                proc.kill()
                proc.wait()
                return {"status": f"killed: rss > {args.max_mem_gb} GB"}
        except (FileNotFoundError, ProcessLookupError):
            pass
        time.sleep(0.05)
    out, err = proc.communicate()
    if proc.returncode:
        return {"status": "error: " + (err.strip().splitlines() or ["exit %d" % proc.returncode])[-1]}
    return {**json.loads(out.strip().splitlines()[-1]), "status": "ok"}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", default="joint,divided,rsa,structsa")
    parser.add_argument("--frames", default="8,32")
    parser.add_argument("--size", default="base")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=0)
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--max-mem-gb", type=float, default=6.0)
    parser.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument("--scheme", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.child:
        args.frames = int(args.frames)
        return child(args)

    from vattn_cli.zoo import token_count

    rows = []
    for frames in (int(f) for f in args.frames.split(",")):
        for scheme in args.schemes.split(","):
            row = {"scheme": scheme, "frames": frames, "tokens": token_count(scheme, frames, args.img_size, 16)}
            row.update(measure(scheme, frames, args))
            rows.append(row)
            print(json.dumps(row), file=sys.stderr, flush=True)

    joint = {r["frames"]: r for r in rows if r["scheme"] == "joint" and r["status"] == "ok"}
    print(f"size={args.size} img={args.img_size} fp32 batch=1 threads={args.threads} "
          f"warmup={args.warmup} repeats={args.repeats}")
    print(f"{'scheme':9} {'frames':>6} {'tokens':>6} {'params_m':>8} {'forward_s':>9} {'x joint':>7} "
          f"{'peak_mem_mb':>11} {'x joint':>7}  status")
    for r in rows:
        ref = joint.get(r["frames"])
        ok = r["status"] == "ok"
        fwd = f"{r['forward_s']:9.2f}" if ok else f"{'-':>9}"
        mem = f"{r['peak_mem_mb']:11.0f}" if ok else f"{'-':>11}"
        t_ratio = f"{r['forward_s'] / ref['forward_s']:7.2f}" if ok and ref else f"{'-':>7}"
        m_ratio = f"{r['peak_mem_mb'] / ref['peak_mem_mb']:7.2f}" if ok and ref else f"{'-':>7}"
        params = f"{r['params_m']:8.1f}" if ok else f"{'-':>8}"
        print(f"{r['scheme']:9} {r['frames']:6d} {r['tokens']:6d} {params} {fwd} {t_ratio} {mem} {m_ratio}  {r['status']}")


if __name__ == "__main__":
    main()

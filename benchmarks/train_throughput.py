"""Training throughput of the tiny model per scheme on this machine, and the share of step time
spent waiting for data (decoding + augmentation not hidden by the loader workers).

Runs the real engine (``vattn_cli.engine.train``) for one epoch on a built-in task and
reads the figures its ``metrics.csv`` row reports (``clips_per_s``, ``data_wait_share``).

    python benchmarks/train_throughput.py --workers 0 --workers 1
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vattn_cli.engine import TrainConfig, train  # noqa: E402
from vattn_cli.zoo import list_schemes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", default="all", help="comma list or 'all'")
    parser.add_argument("--data", default="builtin:appearance")
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, action="append", help="loader workers; repeat to compare")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    schemes = list_schemes() if args.schemes == "all" else args.schemes.split(",")
    rows = []
    for workers in args.workers or [0]:
        for scheme in schemes:
            with tempfile.TemporaryDirectory() as out:
                config = TrainConfig(
                    out_dir=out, scheme=scheme, data=args.data, val="none", model="tiny", frames=args.frames,
                    size=args.size, epochs=1, batch=args.batch, workers=workers, device="cpu",
                )
                start = time.perf_counter()
                row = train(config).history[-1]
                rows.append({"scheme": scheme, "workers": workers, "threads": args.threads, "batch": args.batch,
                             "steps": row["step"], "clips_per_s": row["clips_per_s"],
                             "data_wait_share": row["data_wait_share"],
                             "step_ms": 1000 * args.batch / row["clips_per_s"],
                             "run_s": time.perf_counter() - start})
                print(pd.DataFrame(rows[-1:]).to_string(index=False, header=len(rows) == 1), flush=True)
    frame = pd.DataFrame(rows)
    print("\n" + frame.to_string(index=False, float_format=lambda v: f"{v:.3g}"))


if __name__ == "__main__":
    main()

"""Does each scheme learn the built-in tasks? Trains the tiny model of every scheme on
``builtin:appearance`` and ``builtin:motion`` (CPU minutes) and evaluates on the val split.

Expected: every scheme well above chance on appearance (a single frame answers it); on motion,
schemes that attend across time (joint, divided) learn the reversal pairs, while space-only
attention stays at chance *within* each pair (it identifies the pair from the frames it sees,
not the order). ``pair_acc`` is the share of val clips whose true class outscores its time
reversal; chance is 50%.

    python benchmarks/learn_builtin.py --epochs 10 --out runs/learn
"""

from __future__ import annotations

import argparse
import sys
import json
import time
from pathlib import Path

import pandas as pd
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from vattn_cli.ablate.schemes import pair_accuracy  # noqa: E402
from vattn_cli.engine import TrainConfig, evaluate, train  # noqa: E402
from vattn_cli.zoo import list_schemes  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--schemes", default="space,joint,divided")
    parser.add_argument("--tasks", default="appearance,motion")
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--lr", type=float, default=None)
    parser.add_argument("--frames", type=int, default=8)
    parser.add_argument("--size", type=int, default=64)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--train-scale", default=None, help="LO,HI scale jitter (default: the data's)")
    parser.add_argument("--scratch-init", type=float, default=None, help="(default: the engine's)")
    parser.add_argument("--train-clips", type=int, default=None, help="generate this many training videos per task "
                        "(default: the built-in set's)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", default="runs/learn_builtin", help="one run folder per task/scheme (resumable)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    from vattn_cli.data.synth import REVERSAL_PAIRS

    schemes = list_schemes() if args.schemes == "all" else args.schemes.split(",")
    rows = []
    for task in args.tasks.split(","):
        for scheme in schemes:
            start = time.perf_counter()
            data_options = {"train": args.train_clips} if args.train_clips else {}
            config = TrainConfig(out_dir=str(Path(args.out) / task / scheme), scheme=scheme, data=f"builtin:{task}",
                                 model="tiny", frames=args.frames, size=args.size, epochs=args.epochs,
                                 batch=args.batch, lr=args.lr, workers=args.workers, seed=args.seed, device="cpu",
                                 resume=True, train_scale=tuple(map(float, args.train_scale.split(",")))
                                 if args.train_scale else None, data_options=data_options,
                                 **({} if args.scratch_init is None else {"scratch_init": args.scratch_init}))
            result = train(config, on_epoch=lambda r, s=scheme, t=task: print(
                f"  {t}/{s} epoch {r['epoch']}: loss {r['train_loss']:.3f} val top1 {r['val_top1']:.1f}", flush=True))
            ev = evaluate(result.model, f"builtin:{task}", views=(1, 1), batch=16, workers=args.workers,
                          data_options=data_options)
            rows.append({
                "task": task, "scheme": scheme, "epochs": result.epochs, "top1": ev.top1, "top5": ev.top5,
                "pair_acc": pair_accuracy(ev.scores, ev.labels, list(REVERSAL_PAIRS)) if task == "motion" else None,
                "chance_top1": 100.0 / ev.num_classes, "final_train_loss": result.final.get("train_loss"),
                "clips_per_s": result.final.get("clips_per_s"), "gflops_per_view": ev.gflops_per_view,
                "minutes": (time.perf_counter() - start) / 60,
            })
            print(pd.DataFrame(rows[-1:]).to_string(index=False), flush=True)
    frame = pd.DataFrame(rows)
    print("\n" + frame.to_string(index=False, float_format=lambda v: f"{v:.3g}"))
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "summary.json").write_text(json.dumps(rows, indent=1, default=float) + "\n")


if __name__ == "__main__":
    main()

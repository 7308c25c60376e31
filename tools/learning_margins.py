"""Measure the learning test's statistics over several seeds, for each script and each broken variant.

    python tools/learning_margins.py [--seeds 10] [--first-seed 0] [--only wgan_gp] [--jobs 2]

Prints one row per (variant, seed) and, per variant, the range of each statistic and how many seeds the
test's verdict passes. The thresholds in test_algorithms.py were placed between these distributions.
"""

import argparse
import multiprocessing as mp
import os
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def job(a):
    script, k, seed, iters, root, more = a
    import contextlib
    import importlib
    import io

    import torch

    import test_algorithms as T

    torch.set_num_threads(1)
    module = importlib.import_module(script)
    if k >= 0:
        _, old, new = [b for b in T.BROKEN if b[0] == script][k]
        module = T.variant(module, old, new)
    extra = ["--cppn-width", "16"] if script == "cppn_wgan_gp" else []
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        iters = ["--iters", str(iters)] if iters else []  # default: the test's LEARNING iterations
        stats = T.learning_stats(module, root, out, *extra, "--seed", str(seed), *iters, *more)
    return script, k, seed, stats, T.learning_failures(script, stats)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--first-seed", type=int, default=0)
    p.add_argument("--iters", type=int, default=0, help="default: each script's in test_algorithms.LEARNING")
    p.add_argument("--jobs", type=int, default=2)
    p.add_argument("--only", default="", help="comma-separated scripts (default: all)")
    p.add_argument("--correct-only", action="store_true", help="skip the broken variants")
    p.add_argument("--extra", default="", help="more flags for the scripts, e.g. '--lr 2e-4'")
    args = p.parse_args()
    import test_algorithms as T

    scripts = args.only.split(",") if args.only else ["gan", "wgan", "wgan_gp", "cppn_wgan_gp"]
    root = T.write_bimodal(tempfile.mkdtemp())
    jobs = []
    for s in scripts:
        broken = [] if args.correct_only else [i for i, b in enumerate([b for b in T.BROKEN if b[0] == s])]
        for k in [-1] + broken:
            jobs += [
                (s, k, seed, args.iters, root, args.extra.split())
                for seed in range(args.first_seed, args.first_seed + args.seeds)
            ]
    results = {}
    with mp.get_context("spawn").Pool(args.jobs) as pool:
        for script, k, seed, stats, fails in pool.imap_unordered(job, jobs):
            results.setdefault((script, k), []).append((seed, stats, fails))
            print(script, k, seed, {n: round(v, 3) for n, v in stats.items()}, len(fails), flush=True)
    iters = f"{args.iters} iterations" if args.iters else "the test's iterations"
    print(f"\nsummary, {iters} {args.extra}, {args.seeds} seeds (variant -1 = the correct script)")
    for (script, k), rows in sorted(results.items()):
        name = "correct" if k < 0 else [b for b in T.BROKEN if b[0] == script][k][2][:50]
        ranges = "  ".join(
            f"{n} {min(r[1][n] for r in rows):.3f}..{max(r[1][n] for r in rows):.3f}" for n in rows[0][1]
        )
        print(f"{script:13s} {name:52s} pass {sum(not r[2] for r in rows)}/{len(rows)}  {ranges}")


if __name__ == "__main__":
    main()

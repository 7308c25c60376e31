"""Benchmark: training it/s and peak GPU memory of every script at each size, per mode, on whatever device it finds.

    python bench.py [--iters 200] [--sizes 32 64 96] [--scripts gan wgan wgan_gp cppn_wgan_gp] [--device auto]
    python bench.py --headline 100000  # also wgan_gp.py at 96 on 100,000 images (STL-10's): hours to 100k, memory

Each run trains through the script's own main() (default flags: batch 64, width 64) on a synthetic dataset (random
uint8 images, already on the device, in place of data.load_dataset), logs at --warm iterations and at the end, and
the speed is taken between the two rows of its metrics.csv, so start-up, cuDNN autotuning and the graph capture are
not counted. Modes: eager and --bf16 on a CPU; eager, --cuda-graph and --cuda-graph --bf16 on CUDA, each with its
ratio to eager. Peak memory is torch.cuda.max_memory_allocated over the run (CUDA only).
"""

import argparse
import contextlib
import csv
import importlib
import io
import os
import tempfile

import torch

import data


def speed(script, size, device, iters, warm, n, *extra):
    """(it/s, peak GiB or None) of one run of script.main() on n random images."""
    x = torch.randint(0, 256, (n, 3, size, size), dtype=torch.uint8, device=device)
    load, data.load_dataset = data.load_dataset, lambda *a, **kw: x
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    try:
        with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
            argv = ["--dataset", "folder", "--data-root", out, "--size", size, "--device", device, "--iters", iters,
                    "--log-every", warm, "--sample-every", iters, "--out", out, *extra]  # fmt: skip
            importlib.import_module(script).main([str(a) for a in argv])
            with open(os.path.join(out, "metrics.csv")) as f:
                rows = list(csv.DictReader(f))
    finally:
        data.load_dataset = load
    peak = torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None
    return (iters - warm) / (float(rows[-1]["seconds"]) - float(rows[0]["seconds"])), peak


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=200, help="iterations per run, the first --warm not timed")
    p.add_argument("--warm", type=int, default=50)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96])
    p.add_argument("--scripts", nargs="+", default=["gan", "wgan", "wgan_gp", "cppn_wgan_gp"])
    p.add_argument("--device", default="auto")
    p.add_argument("--images", type=int, default=512, help="synthetic images per run (default: 512)")
    p.add_argument("--headline", type=int, metavar="N", help="also time wgan_gp.py at 96 on N images")
    args = p.parse_args(argv)
    device = data.pick_device(args.device)
    cuda = device.type == "cuda"
    name = f"{torch.cuda.get_device_name(device)}, CUDA {torch.version.cuda}" if cuda else "CPU"
    modes = {"eager": [], "graph": ["--cuda-graph"], "graph+bf16": ["--cuda-graph", "--bf16"]}
    modes = modes if cuda else {"eager": [], "bf16": ["--bf16"]}
    print(f"{name}, torch {torch.__version__}, {args.iters - args.warm} timed iterations, batch 64, width 64")
    cols = [f"{m} it/s" for m in modes] + [f"{m} / eager" for m in list(modes)[1:]] + ["peak GiB"] * cuda
    print("| script | size | " + " | ".join(cols) + " |\n|" + " --- |" * (len(cols) + 2))
    for size in args.sizes:
        for script in args.scripts:
            runs = {m: speed(script, size, device, args.iters, args.warm, args.images, *f) for m, f in modes.items()}
            its = [s for s, _ in runs.values()]
            its = [f"{s:.2f}" for s in its] + [f"{s / its[0]:.2f}x" for s in its[1:]]
            peak = [" / ".join(f"{g:.2f}" for _, g in runs.values())] if cuda else []
            print(f"| {script}.py | {size} | " + " | ".join(its + peak) + " |", flush=True)
    if args.headline:  # python wgan_gp.py --dataset stl10 --size 96, on a dataset of STL-10's size
        for m, f in modes.items() if cuda else [("eager", [])]:  # a CPU: eager only (bf16 is 4x slower there)
            its, peak = speed("wgan_gp", 96, device, args.iters, args.warm, args.headline, *f)
            mem = f", peak {peak:.2f} GiB" if cuda else ""
            mem += f", {1e5 / its / 3600:.1f} h to 100k iterations"
            print(f"headline, wgan_gp.py at 96 on {args.headline:,} images, {m}: {its:.2f} it/s{mem}")


if __name__ == "__main__":
    main()

"""Benchmark: training it/s of every script at each size, eager and with --cuda-graph, on whatever device it finds.

    python bench.py [--iters 300] [--sizes 32 64 96] [--scripts gan wgan wgan_gp cppn_wgan_gp] [--device auto]

Each run trains through the script's own main() (default flags: batch 64, width 64) on a synthetic folder of
random images, logs at --warm iterations and at the end, and the speed is taken between the two rows of its
metrics.csv, so start-up, cuDNN autotuning and the graph capture are not counted. --cuda-graph runs only on CUDA.
"""

import argparse
import contextlib
import csv
import importlib
import io
import os
import tempfile

import numpy as np
import torch
from PIL import Image

import data


def folder(root, size, n=512):
    rng = np.random.default_rng(0)
    for i in range(n):
        Image.fromarray(rng.integers(0, 256, (size, size, 3), dtype=np.uint8)).save(os.path.join(root, f"{i}.png"))
    return root


def speed(script, root, size, device, iters, warm, *extra):
    with tempfile.TemporaryDirectory() as out, contextlib.redirect_stdout(io.StringIO()):
        importlib.import_module(script).main(["--dataset", "folder", "--data-root", root, "--size", str(size),
                                              "--device", device, "--iters", str(iters), "--log-every", str(warm),
                                              "--sample-every", str(iters), "--out", out, *extra])  # fmt: skip
        with open(os.path.join(out, "metrics.csv")) as f:
            rows = list(csv.DictReader(f))
    return (iters - warm) / (float(rows[-1]["seconds"]) - float(rows[0]["seconds"]))


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--iters", type=int, default=300, help="iterations per run, the first --warm not timed")
    p.add_argument("--warm", type=int, default=50)
    p.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 96])
    p.add_argument("--scripts", nargs="+", default=["gan", "wgan", "wgan_gp", "cppn_wgan_gp"])
    p.add_argument("--device", default="auto")
    args = p.parse_args(argv)
    device = data.pick_device(args.device)
    name = torch.cuda.get_device_name(device) if device.type == "cuda" else "CPU"
    modes = {"eager": ["--no-cuda-graph"]} | ({"graph": ["--cuda-graph"]} if device.type == "cuda" else {})
    print(f"{name}, torch {torch.__version__}, {args.iters - args.warm} timed iterations, batch 64, width 64")
    print("| script | size | " + " | ".join(f"{m} it/s" for m in modes) + " | graph / eager |")
    print("| --- | --- | " + " | ".join("---" for _ in modes) + " | --- |")
    for size in args.sizes:
        with tempfile.TemporaryDirectory() as root:
            folder(root, size)
            for script in args.scripts:
                its = {m: speed(script, root, size, str(device), args.iters, args.warm, *f) for m, f in modes.items()}
                ratio = f"{its['graph'] / its['eager']:.2f}x" if "graph" in its else "-"
                print(f"| {script}.py | {size} | " + " | ".join(f"{v:.2f}" for v in its.values()) + f" | {ratio} |")


if __name__ == "__main__":
    main()

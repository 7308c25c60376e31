"""Write training images exactly as a script trains on them (cropped, resized, channels): the reference folder for an
FID. PNGs named by their index in the dataset, all of them or --n picked at random (seed 0).

    python tools/export.py --dataset cifar10 --size 32 --export DIR [--n N]
"""

import argparse
import os
import sys

import torch
from torchvision.transforms.functional import to_pil_image

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402
from wgan_gp import split_size  # noqa: E402  (the four scripts take the same sizes)


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--dataset", default="mnist", help="digits | mnist | cifar10 | stl10 | folder (default: mnist)")
    p.add_argument("--data-root", help="your images (--dataset folder), or where to download (default: data)")
    p.add_argument("--size", type=int, help="image side (default: the scripts' default; give the run's --size)")
    p.add_argument("--export", required=True, metavar="DIR", help="a new or empty folder to write the PNGs to")
    p.add_argument("--n", type=int, help="how many, picked at random (default: all)")
    args = p.parse_args(argv)
    data.check_flags(args)
    args.size = data.default_size(args, split_size) if args.size is None else args.size  # the scripts' default
    data.refuse_nonempty(args.export)
    x = data.load_dataset(args.dataset, args.data_root, args.size, torch.device("cpu"))
    idx = torch.arange(len(x)) if not args.n or args.n >= len(x) else data.random_picks(x, args.n)
    os.makedirs(args.export, exist_ok=True)
    for i in idx.tolist():
        to_pil_image(x[i]).save(os.path.join(args.export, f"{i:06d}.png"))
    print(f"wrote {len(idx)} images of {tuple(x.shape[1:])} to {args.export}")


if __name__ == "__main__":
    main()

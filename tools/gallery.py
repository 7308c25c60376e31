"""The README's pictures, from runs on the offline digits: trains each run below (or resumes or skips it when its
checkpoint is there), then draws docs/img/*.png and the CPPN's GIF from their outputs.

    python tools/gallery.py [--runs runs/gallery] [--out docs/img]

One CPU thread, seed 0 (the scripts' default); on a 2-core CPU about 1 hour 20 minutes in all, most of it the CPPN.
"""

import argparse
import importlib
import os
import shutil
import sys

import torch
from PIL import Image, ImageDraw, ImageFont

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

SMALL = "--dataset digits --width 16 --iters 2000 --sample-every 100 --log-every 50"
RUNS = {  # folder: (script, flags), each run with --device cpu
    "gan": ("gan.py", SMALL),
    "wgan": ("wgan.py", SMALL),
    "wgan_gp": ("wgan_gp.py", SMALL),
    "cppn_wgan_gp": ("cppn_wgan_gp.py", "--dataset digits --iters 400 --sample-every 50 --log-every 50"),
}
STEPS = {"progression": [100, 300, 600, 1000, 2000], "collapse": [300, 600, 1000]}  # the strips' iterations
RENDER, GIF = 512, 128  # the CPPN drawn at 512x512; its slerp GIF at 128x128 (small enough to commit)
PICTURES = ["scripts.png", "progression.png", "metrics.png", "collapse.png", "cppn.png", "cppn.gif"]


def iters(flags):
    return int(flags.split("--iters ")[1].split()[0])


def train(runs, name, script, flags):
    """Run `script` in this process into runs/name up to its --iters: from scratch, resumed, or not at all if done."""
    out, ckpt = os.path.join(runs, name), os.path.join(runs, name, "checkpoint.pt")
    argv = flags.split() + ["--device", "cpu", "--out", out]
    if os.path.exists(ckpt):
        if torch.load(ckpt, weights_only=True)["iter"] >= iters(flags):
            return
        argv += ["--resume", ckpt]
    print(f"python {script} {' '.join(argv)}", flush=True)
    importlib.import_module(script[:-3]).main(argv)


def tiles(path, n=5, side=32, pad=2):
    """The top-left n x n samples of an 8x8 grid that data.save_grid wrote (padding 2)."""
    return Image.open(path).convert("L").crop((0, 0, pad + n * (side + pad), pad + n * (side + pad)))


def strip(panels, scale=2):
    """[(label, image)] side by side, each enlarged `scale` times (nearest: the pixels stay visible), label above."""
    font = ImageFont.load_default(22)
    panels = [(label, im.resize((im.width * scale, im.height * scale), Image.NEAREST)) for label, im in panels]
    w, h = sum(im.width for _, im in panels) + 12 * (len(panels) - 1), max(im.height for _, im in panels) + 34
    sheet, x = Image.new("L", (w, h), 255), 0
    for label, im in panels:
        ImageDraw.Draw(sheet).text((x + 2, 4), label, 0, font)
        sheet.paste(im, (x, 34))
        x += im.width + 12
    return sheet


def build(runs, out, plan=RUNS, steps=STEPS, size=RENDER, gif=GIF):
    """Train (or reuse) every run in `plan`, then write PICTURES into `out`."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        for name, (script, flags) in plan.items():
            train(runs, name, script, flags)
    finally:
        torch.set_num_threads(threads)
    os.makedirs(out, exist_ok=True)
    run = {name: os.path.join(runs, name) for name in plan}
    last = {name: os.path.join(run[name], f"samples_{iters(f):07d}.png") for name, (_, f) in plan.items()}
    head = [("real digits", tiles(os.path.join(run["wgan_gp"], "real_samples.png")))]
    head += [(f"{plan[n][0]}, {iters(plan[n][1]):,}", tiles(last[n])) for n in plan]
    strip(head).save(os.path.join(out, "scripts.png"), optimize=True)
    for picture, name in (("progression", "wgan_gp"), ("collapse", "gan")):
        panels = [(f"iteration {i:,}", tiles(os.path.join(run[name], f"samples_{i:07d}.png"))) for i in steps[picture]]
        strip(panels).save(os.path.join(out, f"{picture}.png"), optimize=True)
    shutil.copyfile(os.path.join(run["wgan_gp"], "metrics.png"), os.path.join(out, "metrics.png"))
    cppn, drawn = importlib.import_module("cppn_wgan_gp"), os.path.join(runs, "cppn_render")
    for s in (size, gif):  # render_S.png: the first 4 fixed z at S x S; interpolation_S.gif: a slerp through them
        cppn.main(["--resume", os.path.join(run["cppn_wgan_gp"], "checkpoint.pt"), "--render", str(s), "--out", drawn])
    small = tiles(last["cppn_wgan_gp"], n=1).crop((2, 2, 34, 34))  # fixed z 0 at the training size, 32x32
    large = Image.open(os.path.join(drawn, f"render_{size}.png")).convert("L").crop((2, 2, 2 + size, 2 + size))
    panels = [("32x32, as trained", small.resize((size, size), Image.NEAREST)), (f"{size}x{size}, drawn", large)]
    strip(panels, scale=1).save(os.path.join(out, "cppn.png"), optimize=True)
    shutil.copyfile(os.path.join(drawn, f"interpolation_{gif}.gif"), os.path.join(out, "cppn.gif"))
    print(f"wrote {', '.join(PICTURES)} to {out}")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", default="runs/gallery", help="the runs' folders (default: runs/gallery)")
    p.add_argument("--out", default="docs/img", help="where the pictures go (default: docs/img)")
    args = p.parse_args(argv)
    build(args.runs, args.out)


if __name__ == "__main__":
    main()

"""A cheap learning score on the offline digits (`--dataset digits`, drawn by data.digits; no downloads).

    python tools/digits.py make DIR [--held-out 2000]   # DIR/train/*.png, DIR/held_out/*.png
    python tools/digits.py make DIR --set shapes        # the same for ten kinds of shapes instead (shapes())
    python tools/digits.py score DIR FOLDER [FOLDER ...]  # FID of each folder of PNGs vs DIR/held_out

`make` writes the 10,000 digits the scripts train on with `--dataset digits` (DIR/train) and 2,000 others drawn
the same way with another seed (DIR/held_out), as 32x32 gray PNGs named INDEX_LABEL.png.

The score is a Frechet distance (the FID's formula) in the 128-d penultimate features of a small CNN trained
here to tell the ten digits apart (cached as DIR/classifier.pt): 1,000 generated samples against 1,000
held-out images. `make` prints the scale: train images as they are and blurred (sigma 1 pixel), noise and
the mean image, each against the held-out ones. `--set shapes` writes a second labelled offline set with other
statistics (filled and outlined figures, bars; shapes() below) for the CPPN's experiments in docs/cppn.md.
"""

import argparse
import glob
import math
import os
import random
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter
from torchvision.transforms.functional import gaussian_blur

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402


def shapes(n=10000, seed=0, side=32, canvas=64):
    """n white-on-black figures of 10 kinds (disc, ring, square, square outline, triangle, triangle outline, plus,
    cross, one bar, two bars), each at a random size, stroke, rotation (+-12 deg), offset and blur, drawn at 64 and
    shrunk to 32 -> (n, 1, side, side) uint8, labels (n,)."""
    rng = random.Random(seed)
    x, y = torch.empty(n, 1, side, side, dtype=torch.uint8), torch.empty(n, dtype=torch.long)
    for i in range(n):
        y[i] = k = rng.randrange(10)
        im = Image.new("L", (canvas, canvas))
        draw, r = ImageDraw.Draw(im), canvas * rng.uniform(0.2, 0.34)
        w = rng.randint(3, round(r / 4))  # stroke: an outline keeps its hole
        a, cx, cy = math.radians(rng.uniform(-12, 12)), *(canvas / 2 + rng.uniform(-4, 4) for _ in range(2))

        def at(t, dx=0.0):  # the point at angle a + t, r from the centre, then shifted by dx across angle a
            return cx + r * math.cos(a + t) - dx * math.sin(a), cy + r * math.sin(a + t) + dx * math.cos(a)

        fill = 255 if k % 2 == 0 else None  # even kinds below 6 filled, odd ones outlined
        if k < 2:
            draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill, outline=255, width=w)
        elif k < 6:
            m, t0 = (4, math.pi / 4) if k < 4 else (3, -math.pi / 2)  # a square on its side, a triangle on its base
            draw.polygon([at(t0 + j * 2 * math.pi / m) for j in range(m)], fill=fill, outline=255, width=w)
        elif k < 8:
            for t in (0, math.pi / 2) if k == 6 else (math.pi / 4, 3 * math.pi / 4):
                draw.line([at(t), at(t + math.pi)], fill=255, width=w)
        else:
            for dx in (0,) if k == 8 else (-r / 2, r / 2):
                draw.line([at(0, dx=dx), at(math.pi, dx=dx)], fill=255, width=w)
        im = im.resize((side, side), Image.BICUBIC).filter(ImageFilter.GaussianBlur(rng.random() * 0.75))
        x[i, 0] = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(side, side)
    return x, y


def make(root, held_out, kind="digits"):
    """DIR/train: the digits `--dataset digits` trains on (data.digits, seed 0), or shapes(); DIR/held_out: others
    drawn the same way (seed 1)."""
    draw = data.digits.__wrapped__ if kind == "digits" else shapes
    for split, (x, y) in (("train", draw()), ("held_out", draw(held_out, seed=1))):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i, (im, label) in enumerate(zip(x, y.tolist())):
            Image.fromarray(im[0].numpy()).save(os.path.join(root, split, f"{i:06d}_{label}.png"))
        print(f"{len(x)} {kind} in {os.path.join(root, split)}")


def load(folder, limit=None):
    """(x in [-1, 1], (N, 1, 32, 32); labels, -1 where the name has none)."""
    paths = sorted(glob.glob(os.path.join(folder, "*.png")))[:limit]
    if not paths:
        raise SystemExit(f"error: no PNGs in {folder}")
    ims = [Image.open(p).convert("L").resize((32, 32), Image.BICUBIC) for p in paths]
    x = torch.stack([torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8) for im in ims]).view(-1, 1, 32, 32)
    names = [os.path.basename(p) for p in paths]
    y = torch.tensor([int(s[-5]) if s[-6] == "_" else -1 for s in names])
    return x.float() / 127.5 - 1, y


class Classifier(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 32, 16, 16)
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 64, 8, 8)
            nn.Conv2d(64, 128, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),  # (B, 128, 4, 4)
            nn.Flatten(), nn.Linear(128 * 16, 128), nn.ReLU(),  # (B, 128): the FID's features
        )  # fmt: skip
        self.head = nn.Linear(128, 10)

    def forward(self, x):
        return self.head(self.features(x))


def classifier(root):
    path = os.path.join(root, "classifier.pt")
    net = Classifier()
    if os.path.exists(path):
        net.load_state_dict(torch.load(path))
        return net.eval()
    torch.manual_seed(0)
    x, y = load(os.path.join(root, "train"))
    opt = torch.optim.Adam(net.parameters(), 1e-3)
    for epoch in range(3):
        for idx in torch.randperm(len(x)).split(128):
            loss = F.cross_entropy(net(x[idx]), y[idx])
            opt.zero_grad()
            loss.backward()
            opt.step()
    xh, yh = load(os.path.join(root, "held_out"))
    with torch.no_grad():
        acc = (net.eval()(xh).argmax(1) == yh).float().mean().item()
    print(f"classifier: held-out accuracy {acc:.3f}")
    torch.save(net.state_dict(), path)
    return net


@torch.no_grad()
def stats(net, x):
    f = torch.cat([net.features(c) for c in x.split(500)]).double()
    return f.mean(0), torch.cov(f.T)


def frechet(a, b):
    (m1, s1), (m2, s2) = a, b
    w, v = torch.linalg.eigh(s1)
    r1 = v @ torch.diag(w.clamp(min=0).sqrt()) @ v.T  # s1^(1/2)
    cross = torch.linalg.eigvalsh(r1 @ s2 @ r1).clamp(min=0).sqrt().sum()  # tr((s1^(1/2) s2 s1^(1/2))^(1/2))
    return ((m1 - m2).square().sum() + s1.trace() + s2.trace() - 2 * cross).item()


def score(root, folders, n=1000):
    net = classifier(root)
    ref = stats(net, load(os.path.join(root, "held_out"), n)[0])
    return {f: frechet(stats(net, load(f, n)[0]), ref) for f in folders}


def main():
    torch.set_num_threads(1)
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["make", "score"])
    p.add_argument("root")
    p.add_argument("folders", nargs="*")
    p.add_argument("--held-out", type=int, default=2000)
    p.add_argument("--set", choices=["digits", "shapes"], default="digits", help="make: which set (default: digits)")
    a = p.parse_args()
    if a.cmd == "make":
        make(a.root, a.held_out, a.set)
        net = classifier(a.root)
        x = load(os.path.join(a.root, "train"), 1000)[0]
        ref = stats(net, load(os.path.join(a.root, "held_out"), 1000)[0])
        torch.manual_seed(0)
        mean = x.mean(0, keepdim=True).expand_as(x)
        blur = gaussian_blur(x, 7, 1.0)  # sigma 1 pixel
        for name, y in (("train", x), ("blurred train", blur), ("noise", torch.rand_like(x) * 2 - 1), ("mean", mean)):
            print(f"scale: {name} vs held-out: {frechet(stats(net, y), ref):.1f}")
    else:
        for f, s in score(a.root, a.folders).items():
            print(f"{s:.2f}  {f}")


if __name__ == "__main__":
    sys.exit(main())

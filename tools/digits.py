"""An offline stand-in for MNIST and a cheap learning score on it (no downloads, no new dependencies).

    python tools/digits.py make DIR [--n 20000] [--held-out 2000]   # DIR/train/*.png, DIR/held_out/*.png
    python tools/digits.py score DIR FOLDER [FOLDER ...]           # FID of each folder of PNGs vs DIR/held_out

Digits 0-9 drawn from the installed TrueType fonts (Pillow's own font if none is found), white on black like
MNIST, each with a random font, size, stroke width, rotation, shear, offset and blur, stored as 32x32 gray PNGs
named INDEX_LABEL.png. Train a script on it with `--dataset folder --data-root DIR/train`.

The score is a Frechet distance (the FID's formula) in the 128-d penultimate features of a small CNN trained
here to tell the ten digits apart (cached as DIR/classifier.pt): 1,000 generated samples against 1,000
held-out images. `make` prints the scale: train images as they are and blurred (sigma 1 pixel), noise and
the mean image, each against the held-out ones.
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
from PIL import Image, ImageDraw, ImageFilter, ImageFont
from torchvision.transforms.functional import gaussian_blur

FONT_DIRS = ["/usr/share/fonts", "/usr/local/share/fonts", "/Library/Fonts", "C:/Windows/Fonts"]


def fonts():
    paths = sorted(p for d in FONT_DIRS for p in glob.glob(os.path.join(d, "**", "*.[ot]tf"), recursive=True))
    return paths or [None]  # None: Pillow's built-in font


def draw_digit(rng, font_paths, side=32, canvas=96):
    """One digit: a glyph at a random font/size/stroke, a random affine map, a slight blur, down to side x side."""
    label, path = rng.randrange(10), rng.choice(font_paths)
    size = rng.randint(44, 60)
    font = ImageFont.truetype(path, size) if path else ImageFont.load_default(size)
    im = Image.new("L", (canvas, canvas), 0)
    d = ImageDraw.Draw(im)
    stroke = rng.choice([0, 0, 1, 2, 3])
    box = d.textbbox((0, 0), str(label), font=font, stroke_width=stroke)
    xy = ((canvas - box[0] - box[2]) / 2, (canvas - box[1] - box[3]) / 2)  # glyph box centred
    d.text(xy, str(label), fill=255, font=font, stroke_width=stroke, stroke_fill=255)
    a, sh = math.radians(rng.uniform(-12, 12)), rng.uniform(-0.25, 0.25)
    s = rng.uniform(0.85, 1.15) * 56 / max(box[3] - box[1], 1)  # digit height ~ 56/96 of the side, as MNIST's 20/28
    tx, ty = rng.uniform(-4, 4), rng.uniform(-4, 4)
    c, n = math.cos(a) / s, math.sin(a) / s  # the inverse map, output -> input, about the centre
    m = [c, -n + sh / s, 0, n, c, 0]
    cx = canvas / 2
    m[2] = cx - m[0] * (cx + tx) - m[1] * (cx + ty)
    m[5] = cx - m[3] * (cx + tx) - m[4] * (cx + ty)
    im = im.transform(im.size, Image.AFFINE, m, Image.BICUBIC)
    im = im.filter(ImageFilter.GaussianBlur(rng.uniform(0.0, 1.5)))
    return label, im.resize((side, side), Image.LANCZOS)


def make(root, n, held_out, seed=0):
    rng, font_paths = random.Random(seed), fonts()
    for split, count in (("train", n), ("held_out", held_out)):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i in range(count):
            label, im = draw_digit(rng, font_paths)
            im.save(os.path.join(root, split, f"{i:06d}_{label}.png"))
    print(f"{n} + {held_out} digits from {len(font_paths)} font(s) in {root}")


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
    p.add_argument("--n", type=int, default=20000)
    p.add_argument("--held-out", type=int, default=2000)
    a = p.parse_args()
    if a.cmd == "make":
        make(a.root, a.n, a.held_out)
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

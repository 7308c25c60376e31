"""A cheap learning score on the offline digits (`--dataset digits`, drawn by data.digits; no downloads).

    python tools/digits.py make DIR [--held-out 2000]   # DIR/train/*.png, DIR/held_out/*.png
    python tools/digits.py score DIR FOLDER [FOLDER ...]  # FID of each folder of PNGs vs DIR/held_out

`make` writes the 10,000 digits the scripts train on with `--dataset digits` (DIR/train) and 2,000 others drawn
the same way with another seed (DIR/held_out), as 32x32 gray PNGs named INDEX_LABEL.png.

The score is a Frechet distance (the FID's formula) in the 128-d penultimate features of a small CNN trained
here to tell the ten digits apart (cached as DIR/classifier.pt): 1,000 generated samples against 1,000
held-out images. `make` prints the scale: train images as they are and blurred (sigma 1 pixel), noise and
the mean image, each against the held-out ones.
"""

import argparse
import glob
import os
import sys

import torch
import torch.nn as nn
import torch.nn.functional as F
from PIL import Image
from torchvision.transforms.functional import gaussian_blur

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
import data  # noqa: E402


def make(root, held_out):
    """DIR/train: the digits `--dataset digits` trains on (data.digits, seed 0); DIR/held_out: others (seed 1)."""
    for split, (x, y) in (("train", data.digits()), ("held_out", data.digits.__wrapped__(held_out, seed=1))):
        os.makedirs(os.path.join(root, split), exist_ok=True)
        for i, (im, label) in enumerate(zip(x, y.tolist())):
            Image.fromarray(im[0].numpy()).save(os.path.join(root, split, f"{i:06d}_{label}.png"))
    print(f"{len(data.digits()[0])} + {held_out} digits in {root}")


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
    a = p.parse_args()
    if a.cmd == "make":
        make(a.root, a.held_out)
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

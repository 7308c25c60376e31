"""Support code for the scripts, no loss logic: datasets as one uint8 tensor, batches, image, log and checkpoint
I/O, flag checks, the generator's weight average, the stop on a signal and the CUDA-graph wrapper.
`python data.py --export DIR` writes the training images as trained on. Every user error is raised as
SystemExit("error: ..."): one line on stderr, exit status 1."""

import argparse
import copy
import csv
import math
import os
import signal

import torch
import torch.nn.functional as F
from PIL import GifImagePlugin, Image, ImageDraw, ImageOps
from torchvision import datasets
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import save_image

NATIVE_SIZE = {"mnist": 28, "cifar10": 32, "stl10": 96, "folder": 64}
GRAY_MODES = {"1", "L", "LA", "La", "I", "I;16", "I;16B", "I;16L", "I;16N", "F"}
# On --resume these are this run's, never the checkpoint's: they say where and how it runs, not what it trains.
NOT_INHERITED = {"resume", "generate", "render", "out", "device", "cuda_graph", "bf16"}
NETWORK_FLAGS = ["size", "z_dim", "width", "cppn_width", "cppn_depth"]  # fixed by a checkpoint's weights
RESUME_RULE = "flags given take effect (network sizes must match); the rest comes from the checkpoint"
FLAG_RANGES = {  # allowed range, as the error states it: (test, the flags of the four scripts it applies to)
    ">= 1": (
        lambda v: v >= 1,
        "size batch_size iters n_critic z_dim width cppn_width log_every sample_every ckpt_every n",
    ),
    ">= 0": (lambda v: v >= 0, "lam cppn_depth generate render"),
    "> 0": (lambda v: v > 0, "lr clip coord_scale cppn_lr_mul"),
    "in [0, 1)": (lambda v: 0 <= v < 1, "beta1 beta2 ema"),
    "in [0, 2^63)": (lambda v: 0 <= v < 2**63, "seed"),
}


def check_ranges(args):
    """Every numeric flag in its range."""
    for allowed, (ok, names) in FLAG_RANGES.items():
        for name in names.split():
            v = getattr(args, name, None)
            if v is not None and not (math.isfinite(v) and ok(v)):
                raise SystemExit(f"error: --{name.replace('_', '-')} {v} is out of range; allowed: {allowed}")


def check_flags(args, ckpt):
    """check_ranges; on --resume, what the checkpoint fixes (the network sizes, and for training --coord-scale) and
    --iters against its iteration; last, a training run's --out must not hold another run."""
    check_ranges(args)
    training = not (args.generate or getattr(args, "render", 0))
    if ckpt:
        for name in NETWORK_FLAGS + (["coord_scale"] if training else []):  # a drawing may use another scale
            if name in ckpt["args"] and getattr(args, name) != ckpt["args"][name]:
                flag, was = name.replace("_", "-"), ckpt["args"][name]
                raise SystemExit(
                    f"error: --{flag} {getattr(args, name)} does not match the checkpoint's --{flag} {was}"
                )
        if training and args.iters <= ckpt["iter"]:
            raise SystemExit(
                f"error: {args.resume} has reached its --iters {args.iters}; give a larger --iters to train on"
                if args.iters == ckpt["args"]["iters"]
                else f"error: --iters {args.iters} is not above the checkpoint's iteration {ckpt['iter']}"
            )
    held = os.path.join(args.out, "checkpoint.pt")
    if training and os.path.exists(held) and not (ckpt and os.path.samefile(held, args.resume)):
        raise SystemExit(f"error: {args.out} holds a run already; continue it with --resume {held} or choose --out")


def pick_device(name, cuda_graph=False):
    """--device auto|cpu|cuda|cuda:N -> torch.device; auto takes CUDA when present. A CUDA device is made the current
    one, so that streams and graphs (--cuda-graph) are on it too."""
    if name == "auto":
        name = "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"error: --device {name} asked for, but this torch ({torch.__version__}) sees no CUDA GPU")
    try:
        device = torch.device(name)
    except RuntimeError:
        raise SystemExit(f"error: --device {name} is not one of auto, cpu, cuda, cuda:N") from None
    if device.type == "cuda":
        index, n = torch.cuda.current_device() if device.index is None else device.index, torch.cuda.device_count()
        if index >= n:
            raise SystemExit(f"error: --device {name}: this machine has {n} CUDA GPU(s), cuda:0 to cuda:{n - 1}")
        device = torch.device("cuda", index)
        torch.cuda.set_device(device)
    if cuda_graph and device.type != "cuda":
        raise SystemExit(f"error: --cuda-graph needs a CUDA device; this run is on {device}")
    return device


def load_dataset(name, root, size, device, channels=None):
    """The whole training set as one uint8 tensor (N, C, size, size) on `device`; C must be `channels` if given."""
    if name == "folder":
        x = _load_folder(root, size)
    elif name in ("mnist", "cifar10", "stl10"):
        x = _load_torchvision(name, root, size)
    else:
        raise SystemExit(f"error: unknown dataset {name!r}; choose mnist, cifar10, stl10 or folder")
    if channels and x.shape[1] != channels:
        raise SystemExit(
            f"error: --dataset {name} --data-root {root} has {x.shape[1]}-channel images, the checkpoint was "
            f"trained on {channels} channels"
        )
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else float("inf")  # on CPU: already loaded
    if x.numel() > 0.7 * free:  # leave room for the networks and their activations
        raise SystemExit(
            f"error: {name} at size {size} needs {x.numel() / 2**30:.1f} GiB but {device} has {free / 2**30:.1f} GiB "
            "free; use a smaller --size or a subset of the images (--dataset folder)"
        )
    return x.to(device)


def _load_torchvision(name, root, size):
    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10, "stl10": datasets.STL10}[name]
    kw = {"split": "unlabeled"} if name == "stl10" else {"train": True}  # STL-10: the 100k unlabeled images
    try:
        ds = cls(root, download=True, **kw)
    except Exception as e:
        raise SystemExit(
            f"error: could not download {name} into {root} ({type(e).__name__}: {' '.join(str(e).split())[-160:]}); "
            f"offline, put the images in a folder and run with --dataset folder --data-root DIR"
        ) from None
    x = torch.as_tensor(ds.data)
    x = x[:, None] if x.dim() == 3 else x  # MNIST (N, 28, 28) -> (N, 1, 28, 28)
    x = x.permute(0, 3, 1, 2) if x.shape[-1] == 3 else x  # CIFAR-10 stores (N, 32, 32, 3)
    if x.shape[-1] != size:  # bicubic and antialiased, 4096 images at a time to keep the float copies small
        resized = (F.interpolate(c.float(), size, mode="bicubic", antialias=True) for c in x.split(4096))
        x = torch.cat([c.round().clamp(0, 255).to(torch.uint8) for c in resized])
    return x.contiguous()


def _to_rgb(im):
    """Any Pillow mode -> 8-bit RGB. 16- and 32-bit integer gray ("I;16", "I") are scaled by the 16-bit range
    (v * 255 / 65535, clipped), float gray ("F") by the image's own min..max; transparent pixels (alpha,
    palette or colour-key transparency) are composited onto white."""
    if im.mode in ("I", "F") or im.mode.startswith("I;16"):
        v = pil_to_tensor(im.convert("F"))  # (1, H, W) float32, exact for 16-bit values
        lo, hi = (v.min(), v.max()) if im.mode == "F" else (0, 65535)
        im = to_pil_image(((v - lo) * 255 / max(hi - lo, 1e-12)).round().clamp(0, 255).to(torch.uint8))
    if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:
        im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
    return im.convert("RGB")


def _load_folder(root, size):
    """Every image under root, recursively, made RGB by _to_rgb, centre-cropped and resized; 1 channel if all
    are grayscale."""
    if not os.path.isdir(root):
        raise SystemExit(f"error: --data-root {root} is not a folder")
    exts = {e for e, f in Image.registered_extensions().items() if f in Image.OPEN}
    paths = sorted(
        os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if os.path.splitext(f)[1].lower() in exts
    )
    images, gray, bad = [], True, []
    for p in paths:
        try:
            with Image.open(p) as im:
                mode, im = (
                    im.mode,
                    ImageOps.fit(_to_rgb(ImageOps.exif_transpose(im)), (size, size), Image.BICUBIC),
                )
        except Exception:  # unreadable or corrupt: skip it, count it, report it
            bad.append(p)
            continue
        gray &= mode in GRAY_MODES
        images.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3))
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image file(s) under {root}, e.g. {bad[0]}")
    if not images:
        raise SystemExit(f"error: no readable images under {root} (looked for {', '.join(sorted(exts)[:8])}, ...)")
    x = torch.stack(images).permute(0, 3, 1, 2)
    return (x[:, :1] if gray else x).contiguous()


def batches(x, batch_size):
    """Endless random batches from the uint8 dataset, scaled to [-1, 1], never leaving its device."""
    while True:
        idx = torch.randint(len(x), (batch_size,), device=x.device)
        yield x[idx].float().div_(127.5).sub_(1)


def save_grid(x, path, nrow=8):
    """Save images in [-1, 1] as one PNG grid."""
    save_image(x.float().mul(0.5).add(0.5).clamp(0, 1), path, nrow=nrow, padding=2)


def random_picks(x, n):
    """n distinct indices into x, from a generator of their own (seed 0): the training's random stream is untouched."""
    return torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]


def save_real_grid(x, path, n=64):
    """An 8x8 grid of training images as trained on (cropped, resized, channels), from random_picks: a bad crop or
    a wrong channel count shows at a glance."""
    save_grid(x[random_picks(x, n).to(x.device)].float() / 127.5 - 1, path)


def export_images(x, out, n=None):
    """Write training images exactly as trained on, as a flat folder of PNGs named by their index in the dataset:
    all of them, or n picked at random (seed 0). The reference folder for an FID."""
    idx = torch.arange(len(x)) if not n or n >= len(x) else random_picks(x, n)
    os.makedirs(out, exist_ok=True)
    for i in idx.tolist():
        to_pil_image(x[i].cpu()).save(os.path.join(out, f"{i:06d}.png"))
    return len(idx)


def save_gif(frames, path, ms=80):
    """Save images in [-1, 1], each (C, H, W), as a looping animated GIF, written one frame at a time (from any
    iterable, a generator included): memory holds one frame whatever their size and number. Gray frames share the
    file's gray palette; RGB frames each carry their own (Pillow's adaptive one), as Pillow's own GIF writer makes."""
    with open(path, "wb") as f:
        for i, frame in enumerate(frames):
            im = to_pil_image(frame.float().mul(127.5).add(127.5).round().clamp(0, 255).to(torch.uint8).cpu())
            im = im if im.mode == "L" else im.convert("P", palette=Image.Palette.ADAPTIVE)
            if i == 0:  # the file's header: size, the first palette, loop forever
                f.write(b"".join(GifImagePlugin.getheader(im, info={"loop": 0})[0]))
            f.write(b"".join(GifImagePlugin.getdata(im, duration=ms, include_color_table=True)))
        f.write(b";")  # the GIF trailer


def slerp(z0, z1, t):
    """Spherical interpolation (Gaussian z keep their norm) from z0 to z1, both (B, Z), at t (T,) -> (B, T, Z)."""
    omega = torch.acos(F.cosine_similarity(z0, z1, dim=1).clamp(-1, 1)).clamp_min(1e-4)[:, None, None]  # (B, 1, 1)
    t = t[None, :, None]  # (1, T, 1)
    return (torch.sin((1 - t) * omega) * z0[:, None] + torch.sin(t * omega) * z1[:, None]) / torch.sin(omega)


def save_checkpoint(obj, path):
    """torch.save to a temporary file, then an atomic rename: a crash never leaves half a checkpoint."""
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def restore(ckpt, args, device, G, D, opt_G, opt_D, G_ema):
    """Load a checkpoint's weights, optimizer state and G's average (with --ema 0: G, so that samples come from G);
    the optimizers keep this run's hyper-parameters (--lr, the betas, capturable for --cuda-graph), not the
    checkpoint's. The random state continues the checkpoint's unless --seed changed. Prints one line: the
    checkpoint, its iteration, the target and the flags that changed. Returns (iteration, seconds, fixed_z)."""
    try:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        G_ema.model.load_state_dict(ckpt["G_ema"] if args.ema and "G_ema" in ckpt else ckpt["G"])
        for opt, saved in ((opt_G, ckpt["opt_G"]), (opt_D, ckpt["opt_D"])):
            mine = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            groups = [s | g for s, g in zip(saved["param_groups"], mine, strict=True)]
            opt.load_state_dict(saved | {"param_groups": groups})
    except (KeyError, RuntimeError, ValueError) as e:
        raise SystemExit(f"error: {args.resume} does not fit these settings ({str(e).splitlines()[0]})") from None
    if args.seed == ckpt["args"]["seed"]:
        set_rng_state(ckpt["rng"], device)
    old = {k: v for k, v in ckpt["args"].items() if k not in NOT_INHERITED}  # those are this run's: never "changed"
    changed = [f"--{k.replace('_', '-')} {v} -> {getattr(args, k)}" for k, v in old.items() if getattr(args, k, v) != v]
    todo = "" if args.generate or getattr(args, "render", 0) else f" to train to {args.iters}"
    print(f"resumed {args.resume} at iteration {ckpt['iter']}{todo} on {device}; changed: {', '.join(changed) or '-'}")
    return ckpt["iter"], ckpt["seconds"], ckpt["fixed_z"].to(device)


def rng_state(device):
    """The random state a checkpoint holds: the CPU's, and on CUDA the training device's only."""
    return {"cpu": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}


def set_rng_state(rng, device):
    """rng_state's inverse, onto this run's device, whichever GPU trained (older checkpoints hold every GPU's state:
    GPU 0's is taken)."""
    torch.set_rng_state(rng["cpu"])
    if device.type == "cuda" and rng["cuda"]:
        torch.cuda.set_rng_state(rng["cuda"][0], device)


def load_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: checkpoint {path} does not exist") from None
    except Exception as e:
        raise SystemExit(f"error: checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__})") from None


class EMA:
    """A copy of `model` whose weights and float buffers follow it as an exponential moving average (Yazici et al.,
    "The Unusual Effectiveness of Averaging in GAN Training", 2019, arXiv:1806.04498): update(n) after the model's
    n-th step sets avg <- d * avg + (1 - d) * current, d = min(decay, (1 + n) / (10 + n)). That warm-up (TensorFlow's
    ExponentialMovingAverage with num_updates) forgets the random start within the first iterations; d reaches
    0.999 at n = 8,990. It starts as the model's copy; decay 0 keeps it equal to the model. It only reads the
    model: training is unchanged. Kept in eval mode, without gradients."""

    def __init__(self, model, decay):
        self.model, self.decay = copy.deepcopy(model).eval().requires_grad_(False), decay
        self.pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))  # shared storage

    @torch.no_grad()
    def update(self, n):
        d = min(self.decay, (1 + n) / (10 + n))
        for avg, cur in self.pairs:
            if avg.is_floating_point():
                avg.lerp_(cur, 1 - d)  # torch.lerp with weight 1 gives cur exactly
            else:
                avg.copy_(cur)  # BatchNorm's num_batches_tracked


class CudaGraphed:
    """step(*a) run as a CUDA graph (with enabled; otherwise just step(*a)). Per value of the last argument
    (n_critic), the first `warmup` calls run eagerly on a side stream (cuDNN autotuning and the allocator settle
    there), the next is captured and then replayed at once (capturing runs nothing: that iteration still has to
    happen), and every later call is one replay. A graph reads and writes fixed memory: parameters, optimizer state
    (capturable=True), the dataset and the statistics tensor must be loaded before the first call and only changed
    in place after it. UNTESTED on a GPU so far (no GPU was lent to the session that wrote it): off by default."""

    def __init__(self, step, enabled, warmup=3):
        self.step, self.enabled, self.warmup, self.graphs = step, enabled, warmup, {}
        self.calls, self.stream = {}, torch.cuda.Stream() if enabled else None

    def __call__(self, *a):
        if not self.enabled:
            return self.step(*a)
        key = a[-1]
        if key not in self.graphs:
            self.stream.wait_stream(torch.cuda.current_stream())
            if self.calls.get(key, 0) < self.warmup:
                with torch.cuda.stream(self.stream):
                    self.step(*a)
                self.calls[key] = self.calls.get(key, 0) + 1
            else:
                self.graphs[key] = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graphs[key], stream=self.stream):
                    self.step(*a)
            torch.cuda.current_stream().wait_stream(self.stream)
        if key in self.graphs:
            self.graphs[key].replay()


class Stop:
    """with Stop() as stop: SIGINT (Ctrl-C) and SIGTERM (a scheduler's limit, `timeout`, `docker stop`) only set
    stop.signal, so the loop can end its generator iteration and save: every checkpoint is an iteration boundary.
    A second signal stops at once; the last checkpoint stays."""

    def __enter__(self):
        self.signal, self.old = None, {s: signal.signal(s, self.handle) for s in (signal.SIGINT, signal.SIGTERM)}
        return self

    def handle(self, signum, frame):
        if self.signal:
            raise SystemExit(f"stopped at once by a second {signal.Signals(signum).name}; the last checkpoint stays")
        self.signal = signal.Signals(signum).name
        print(f"{self.signal}: saving after this iteration (send it again to stop at once)", flush=True)

    def __exit__(self, *exc):
        for s, handler in self.old.items():
            signal.signal(s, handler)


class MetricsLog:
    """metrics.csv and metrics.png (one panel per column), both rewritten atomically on every write. A resumed run
    (resume: the checkpoint's path) starts from the rows of the checkpoint's folder up to its iteration."""

    def __init__(self, out, columns, start_iter, resume=None):
        self.out, self.columns, self.rows = out, ["iter", *columns, "seconds"], []
        old = resume and os.path.join(os.path.dirname(resume), "metrics.csv")
        if old and os.path.exists(old):
            with open(old) as f:
                self.rows = [[float(v) for v in r] for r in list(csv.reader(f))[1:] if int(r[0]) <= start_iter]
            self.append()  # rows past the checkpoint go now, not at the first report

    def append(self, *row):  # rewrites the whole (small) file, so it always matches the checkpoint's past
        self.rows += row
        with open(os.path.join(self.out, "metrics.csv.tmp"), "w", newline="") as f:
            csv.writer(f).writerows([self.columns, *([int(r[0]), *(f"{v:.6g}" for v in r[1:])] for r in self.rows)])
        os.replace(os.path.join(self.out, "metrics.csv.tmp"), os.path.join(self.out, "metrics.csv"))
        png = os.path.join(self.out, "metrics.png")
        if self.rows:
            self.plot(png + ".tmp")
            os.replace(png + ".tmp", png)
        elif os.path.exists(png):  # a resume from before the first report: no curve yet
            os.remove(png)

    def plot(self, path, w=480, h=170):
        """One panel per metric against iter: its last value on top, its min and max at the left, the first, middle
        and last iteration below; a single row is drawn as a point."""
        img = Image.new("RGB", (w, h * (len(self.columns) - 2)), "white")
        draw, its = ImageDraw.Draw(img), [r[0] for r in self.rows]
        x0, x1 = its[0], max(its[-1], its[0] + 1)
        for k, name in enumerate(self.columns[1:-1]):
            ys, top, bottom = [r[k + 1] for r in self.rows], k * h + 18, k * h + h - 18  # rows are finite
            pad = 0 if max(ys) > min(ys) else abs(ys[0]) / 10 or 1  # a flat series sits mid-panel
            lo, hi = min(ys) - pad, max(ys) + pad
            draw.rectangle([50, top, w - 8, bottom], outline="gray")
            draw.text((50, top - 14), f"{name} = {ys[-1]:.4g}   (iter {its[-1]:.0f})", fill="black")
            draw.text((2, top), f"{hi:.3g}", fill="gray")
            draw.text((2, bottom - 11), f"{lo:.3g}", fill="gray")
            for i in sorted({x0, (x0 + x1) // 2, its[-1]}):  # iteration axis
                x = 50 + (i - x0) / (x1 - x0) * (w - 60)
                draw.line([(x, bottom), (x, bottom + 3)], fill="gray")
                draw.text((min(x - 3, w - 8 - 6 * len(f"{i:.0f}")), bottom + 4), f"{i:.0f}", fill="gray")
            xy = [
                (50 + (i - x0) / (x1 - x0) * (w - 60), bottom - (y - lo) / (hi - lo) * (bottom - top))
                for i, y in zip(its, ys)
            ]
            draw.line(xy, fill="navy", width=2)
            draw.ellipse([xy[-1][0] - 3, xy[-1][1] - 3, xy[-1][0] + 3, xy[-1][1] + 3], fill="navy")  # the last row
        img.save(path, "PNG")


def main(argv=None):
    p = argparse.ArgumentParser(description="Write the training images exactly as the scripts train on them.")
    p.add_argument("--dataset", default="mnist", help="mnist | cifar10 | stl10 | folder (default: mnist)")
    p.add_argument("--data-root", default="data", help="download folder, or the image folder (default: data)")
    p.add_argument("--size", type=int, help="image side (default: the dataset's, 64 for a folder)")
    p.add_argument("--export", required=True, metavar="DIR", help="folder to write the PNGs to")
    p.add_argument("--n", type=int, help="how many, picked at random (default: all)")
    args = p.parse_args(argv)
    args.size = NATIVE_SIZE.get(args.dataset, 64) if args.size is None else args.size
    check_ranges(args)
    x = load_dataset(args.dataset, args.data_root, args.size, torch.device("cpu"))
    print(f"wrote {export_images(x, args.export, args.n)} images of {tuple(x.shape[1:])} to {args.export}")


if __name__ == "__main__":  # python data.py --dataset cifar10 --size 32 --export DIR [--n N]
    main()

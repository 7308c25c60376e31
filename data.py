"""The scripts' support code, no loss logic: datasets (one uint8 tensor; `digits` drawn here, offline), batches, image,
log and checkpoint I/O, flag checks, G's weight average, the stop on a signal, the CUDA-graph wrapper. A user error is
SystemExit("error: ..."): one line, exit status 1."""

import contextlib
import copy
import csv
import functools
import math
import os
import random
import signal

import torch
import torch.nn.functional as F
from PIL import Image, ImageDraw, ImageFilter, ImageFont, ImageOps
from torchvision import datasets
from torchvision.transforms.functional import pil_to_tensor, to_pil_image
from torchvision.utils import save_image

NATIVE_SIZE = {"digits": 32, "mnist": 28, "cifar10": 32, "stl10": 96}  # a folder's: default_size
# On --resume these are this run's, never the checkpoint's: they say where and how it runs, not what it trains.
NOT_INHERITED = {"resume", "generate", "render", "out", "device", "cuda_graph", "bf16"}
NETWORK_FLAGS = ["size", "z_dim", "width", "cppn_width", "cppn_depth"]  # fixed by a checkpoint's weights
RESUME_RULE = "flags given take effect (network sizes must match); the rest comes from the checkpoint"
FLAG_RANGES = {  # allowed range, as the error states it: (its test, the flags of any of the scripts it applies to)
    ">= 1": (
        lambda v: v >= 1,
        "size batch_size iters n_critic z_dim width cppn_width log_every sample_every ckpt_every n",
    ),
    ">= 0": (lambda v: v >= 0, "lam cppn_depth generate render"),
    "> 0": (lambda v: v > 0, "lr clip coord_scale cppn_lr_mul"),
    "in [0, 1)": (lambda v: 0 <= v < 1, "beta1 beta2 ema"),
    "in [0, 2^63)": (lambda v: 0 <= v < 2**63, "seed"),
}


def finish_args(args, ckpt, script, fits):
    """Check the flags and data; fill in --size (default_size) and --out (the checkpoint's folder, else runs/SCRIPT-
    DATA-SIZE); check fits(size), --device, what a checkpoint fixes; last, an --out or --generate folder in use."""
    sampling = args.generate or getattr(args, "render", 0)
    if ckpt and args.dataset == "digits" and args.data_root == ckpt["args"].get("data_root"):
        args.data_root = None  # inherited from a checkpoint on other data, not typed: the digits read none
    check_flags(args, data=not sampling)  # sampling reads no data
    if sampling and not ckpt:
        raise SystemExit(f"error: --{'generate N' if args.generate else 'render SIZE'} needs --resume CKPT")
    args.size = default_size(args, fits) if args.size is None else args.size
    if not args.out:
        data = os.path.basename(os.path.abspath(args.data_root or "")) if args.dataset == "folder" else args.dataset
        args.out = os.path.dirname(os.path.abspath(args.resume)) if ckpt else f"runs/{script}-{data}-{args.size}"
    fits(args.size)
    pick_device(args.device, args.cuda_graph)  # a bad --device fails before --out is looked at
    for name in (NETWORK_FLAGS + ([] if sampling else ["coord_scale"])) if ckpt else []:  # a drawing may rescale
        if name in ckpt["args"] and getattr(args, name) != ckpt["args"][name]:
            flag, was = name.replace("_", "-"), ckpt["args"][name]
            raise SystemExit(f"error: --{flag} {getattr(args, name)} does not match the checkpoint's --{flag} {was}")
    if ckpt and not sampling and args.iters <= ckpt["iter"]:
        why = "has reached its" if args.iters == ckpt["args"]["iters"] else f"is at iteration {ckpt['iter']}, not below"
        raise SystemExit(f"error: {args.resume} {why} --iters {args.iters}; give a larger --iters to train on")
    held = os.path.join(args.out, "checkpoint.pt")
    if not sampling and os.path.exists(held) and not (ckpt and os.path.samefile(held, args.resume)):
        raise SystemExit(f"error: {args.out} holds a run already; continue it with --resume {held} or choose --out")
    if args.generate:
        refuse_nonempty(os.path.join(args.out, "generated"))


def check_flags(args, data=True):
    """Every flag in its range; with `data`: --dataset known, a folder's --data-root a folder, the digits' none."""
    for allowed, (ok, names) in FLAG_RANGES.items():
        for name in names.split():
            if (v := getattr(args, name, None)) is not None and not (math.isfinite(v) and ok(v)):
                raise SystemExit(f"error: --{name.replace('_', '-')} {v} is out of range; allowed: {allowed}")
    folder = args.dataset == "folder"
    if data and not folder and args.dataset not in NATIVE_SIZE:
        raise SystemExit(f"error: unknown --dataset {args.dataset}; choose digits, mnist, cifar10, stl10 or folder")
    if data and folder and not args.data_root:
        raise SystemExit("error: --dataset folder needs --data-root DIR, the folder of your images")
    if data and folder and not os.path.isdir(args.data_root):
        raise SystemExit(f"error: --data-root {args.data_root} is not a folder")
    if data and args.dataset == "digits" and args.data_root:
        raise SystemExit("error: --dataset digits is drawn in memory and reads no --data-root")


def default_size(args, fits):
    """The dataset's side; a folder's images' when all are square, of one side up to 128 that fits(), else 64."""
    if args.dataset != "folder":
        return NATIVE_SIZE[args.dataset]
    sizes = set()
    for path in image_paths(args.data_root):
        with contextlib.suppress(Exception), Image.open(path) as im:  # unreadable: the loader reports it
            sizes.add(im.size)
    (w, h), *more = sorted(sizes) or [(0, 0)]
    with contextlib.suppress(SystemExit):  # fits(side) raises for a side the networks cannot take
        if not more and w == h and 0 < w <= 128 and fits(w):
            return w
    if sizes:
        print(f"note: --size 64: the images under {args.data_root} are not all of one square side up to 128 that the "
              f"networks take ({len(sizes)} size(s), e.g. {w}x{h}); give --size to choose")  # fmt: skip
    return 64


def refuse_nonempty(folder):
    if os.path.isdir(folder) and os.listdir(folder):  # an FID over old and new files mixed would be wrong
        raise SystemExit(f"error: {folder} is not empty; an FID over old and new files mixed is wrong: empty it first")


def pick_device(name, cuda_graph=False):
    """--device auto|cpu|cuda|cuda:N -> torch.device (auto: CUDA if any), made current: streams and graphs go on it."""
    name = ("cuda" if torch.cuda.is_available() else "cpu") if name == "auto" else name
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
        torch.cuda.set_device(device := torch.device("cuda", index))
    if cuda_graph and device.type != "cuda":
        raise SystemExit(f"error: --cuda-graph needs a CUDA device; this run is on {device}")
    return device


def load_dataset(name, root, size, device, channels=None):
    """The whole training set as one uint8 tensor (N, C, size, size) on `device`; C must be `channels` if given."""
    if name == "folder":
        x = _load_folder(root, size)
    else:  # resized bicubic and antialiased, 4096 images at a time to keep the float copies small
        x = digits()[0] if name == "digits" else _load_torchvision(name, root or "data")
        if x.shape[-1] != size:
            resized = (F.interpolate(c.float(), size, mode="bicubic", antialias=True) for c in x.split(4096))
            x = torch.cat([c.round().clamp(0, 255).to(torch.uint8) for c in resized])
    if channels and x.shape[1] != channels:
        where = f"--dataset {name}" + (f" --data-root {root}" if root else "")
        raise SystemExit(f"error: {where} has {x.shape[1]}-channel images, the checkpoint was trained on {channels}")
    free = torch.cuda.mem_get_info(device)[0] if device.type == "cuda" else float("inf")  # on CPU: already loaded
    if x.numel() > 0.7 * free:  # leave room for the networks and their activations
        raise SystemExit(f"error: {name} at size {size} needs {x.numel() / 2**30:.1f} GiB but {device} has "
                         f"{free / 2**30:.1f} GiB free; use a smaller --size or fewer images")  # fmt: skip
    return x.contiguous().to(device)


@functools.cache  # drawn once a process
def digits(n=10000, seed=0, side=32, canvas=64):
    """n digits, white on black, in Pillow's own font (the same on every machine with that Pillow wheel) at a random
    stroke, height, rotation, shear, offset and blur -> (n, 1, side, side) uint8, labels (n,)."""
    font, glyphs = ImageFont.load_default(48), {}
    for label, stroke in [(d, s) for d in range(10) for s in range(4)]:  # each glyph centred on the canvas
        im = Image.new("L", (canvas, canvas))
        draw = ImageDraw.Draw(im)
        x0, y0, x1, y1 = draw.textbbox((0, 0), str(label), font=font, stroke_width=stroke)
        xy = ((canvas - x0 - x1) / 2, (canvas - y0 - y1) / 2)
        draw.text(xy, str(label), 255, font, stroke_width=stroke, stroke_fill=255)
        glyphs[label, stroke] = im.filter(ImageFilter.GaussianBlur(1)), y1 - y0  # blurred: no aliasing when shrunk
    rng, h = random.Random(seed), side / 2
    x, y = torch.empty(n, 1, side, side, dtype=torch.uint8), torch.empty(n, dtype=torch.long)
    for i in range(n):
        y[i] = label = rng.randrange(10)
        im, height = glyphs[label, rng.choice([0, 0, 1, 2, 3])]
        a, shear, k = math.radians(rng.uniform(-12, 12)), rng.uniform(-0.25, 0.25), rng.uniform(0.85, 1.15)
        k = height / (k * 0.6 * side)  # the inverse scale: digits about 0.6 of the side high
        dx, dy, blur = rng.uniform(-2, 2), rng.uniform(-2, 2), rng.random() * 0.75
        c, s = k * math.cos(a), k * math.sin(a)
        m = [c, shear * k - s, 0, s, c, 0]  # an output pixel -> the glyph's: rotated, sheared, scaled, shifted
        m[2], m[5] = canvas / 2 - m[0] * (h + dx) - m[1] * (h + dy), canvas / 2 - m[3] * (h + dx) - m[4] * (h + dy)
        im = im.transform((side, side), Image.AFFINE, m, Image.BICUBIC).filter(ImageFilter.GaussianBlur(blur))
        x[i, 0] = torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(side, side)
    return x, y


def _load_torchvision(name, root):
    cls = {"mnist": datasets.MNIST, "cifar10": datasets.CIFAR10, "stl10": datasets.STL10}[name]
    before = {d for d, _, _ in os.walk(root)}
    try:  # STL-10: the 100k unlabeled images
        x = torch.as_tensor(cls(root, download=True, **({"split": "unlabeled"} if name == "stl10" else {})).data)
    except Exception as e:
        for d, _, _ in os.walk(root, topdown=False):  # the empty folders this attempt made go
            if d not in before and not os.listdir(d):
                os.rmdir(d)
        why = f"{type(e).__name__}: {' '.join(str(e).split())}"
        raise SystemExit(f"error: could not download {name} into {root} ({why}); offline, use --dataset digits "
                         "(drawn here) or your images: --dataset folder --data-root DIR") from None  # fmt: skip
    x = x[:, None] if x.dim() == 3 else x  # MNIST (N, 28, 28) -> (N, 1, 28, 28)
    return x.permute(0, 3, 1, 2) if x.shape[-1] == 3 else x  # CIFAR-10 stores (N, 32, 32, 3)


def image_paths(root):
    ext = {e for e, f in Image.registered_extensions().items() if f in Image.OPEN}
    return sorted(os.path.join(d, f) for d, _, fs in os.walk(root) for f in fs if os.path.splitext(f)[1].lower() in ext)


def _load_folder(root, size):
    """Every image under root in 8-bit RGB, centre-cropped and resized (1 channel if all are gray)."""
    images, gray, bad = [], True, []
    for p in image_paths(root):
        try:
            with Image.open(p) as im:
                im, mode = ImageOps.exif_transpose(im), im.mode
                if mode in ("I", "F") or mode.startswith("I;16"):  # integer gray by the 16-bit range, float by its own
                    v = pil_to_tensor(im.convert("F"))  # (1, H, W) float32, exact for 16-bit values
                    lo, hi = (v.min(), v.max()) if mode == "F" else (0, 65535)
                    im = to_pil_image(((v - lo) * 255 / max(hi - lo, 1e-12)).round().clamp(0, 255).to(torch.uint8))
                if im.mode in ("RGBA", "RGBa", "LA", "La", "PA") or "transparency" in im.info:  # onto white
                    im = Image.alpha_composite(Image.new("RGBA", im.size, "white"), im.convert("RGBA"))
                im = ImageOps.fit(im.convert("RGB"), (size, size), Image.BICUBIC)
        except Exception:  # unreadable: skipped, counted, reported
            bad.append(p)
            continue
        gray &= Image.getmodebase(mode) == "L"
        images.append(torch.frombuffer(bytearray(im.tobytes()), dtype=torch.uint8).view(size, size, 3))
    if bad:
        print(f"warning: skipped {len(bad)} unreadable image file(s) under {root}, e.g. {bad[0]}")
    if not images:
        raise SystemExit(f"error: no readable images under {root} (of the {len(Image.OPEN)} formats Pillow opens)")
    x = torch.stack(images).permute(0, 3, 1, 2)
    return x[:, :1] if gray else x


def batches(x, batch_size):
    """Endless random batches from the uint8 dataset, scaled to [-1, 1], never leaving its device."""
    while True:
        yield x[torch.randint(len(x), (batch_size,), device=x.device)].float().div_(127.5).sub_(1)


def save_grid(x, path, nrow=8):
    """Save images in [-1, 1] as one PNG grid."""
    save_image(x.float().mul(0.5).add(0.5).clamp(0, 1), path, nrow=nrow, padding=2)


def random_picks(x, n):
    """n distinct indices into x, from a generator of their own (seed 0): the training's random stream is untouched."""
    return torch.randperm(len(x), generator=torch.Generator().manual_seed(0))[:n]


def save_real_grid(x, path, n=64):
    """An 8x8 grid of training images as trained on: a bad crop shows at a glance. -> warn_if_alike's yardstick."""
    save_grid(real := x[random_picks(x, n).to(x.device)].float() / 127.5 - 1, path)
    return spread(real)


def spread(x):
    """How unlike one another the images x (B, C, H, W) are: their mean L2 distance over all pairs."""
    return torch.pdist(x.flatten(1).float()).mean().item()


def warn_if_alike(samples, real_spread, done, below=0.25):
    """One warning line when the fixed-z samples' spread is under `below` of the real grid's: all alike."""
    if (alike := spread(samples) / real_spread) < below:
        print(f"warning: iteration {done}: the fixed-z samples are nearly all alike (spread {alike:.2f} of the real "
              "images'): normal early on, a collapse if it lasts; try a lower --lr, a wider --width or another "
              "--seed")  # fmt: skip


def slerp(z0, z1, t):
    """Spherical interpolation (Gaussian z keep their norm) from z0 to z1, both (B, Z), at t (T,) -> (B, T, Z)."""
    omega = torch.acos(F.cosine_similarity(z0, z1, dim=1).clamp(-1, 1)).clamp_min(1e-4)[:, None, None]  # (B, 1, 1)
    t = t[None, :, None]  # (1, T, 1)
    return (torch.sin((1 - t) * omega) * z0[:, None] + torch.sin(t * omega) * z1[:, None]) / torch.sin(omega)


def save_checkpoint(obj, path):
    """torch.save to a temporary file, then an atomic rename: a crash never leaves half a checkpoint."""
    torch.save(obj, path + ".tmp")
    os.replace(path + ".tmp", path)


def load_checkpoint(path):
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise SystemExit(f"error: checkpoint {path} does not exist") from None
    except Exception as e:
        raise SystemExit(f"error: checkpoint {path} is corrupt or not a checkpoint ({type(e).__name__})") from None


def restore(ckpt, args, device, G, D, opt_G, opt_D, G_ema):
    """Load weights, optimizer state (with this run's --lr, betas, capturable), G's average (--ema 0: G) and, unless
    --seed changed, the random state. -> (iteration, seconds, fixed_z)"""
    try:
        G.load_state_dict(ckpt["G"])
        D.load_state_dict(ckpt["D"])
        G_ema.model.load_state_dict(ckpt["G_ema"] if args.ema and "G_ema" in ckpt else ckpt["G"])
        for opt, saved in ((opt_G, ckpt["opt_G"]), (opt_D, ckpt["opt_D"])):
            mine = [{k: v for k, v in g.items() if k != "params"} for g in opt.param_groups]
            opt.load_state_dict(
                saved | {"param_groups": [s | g for s, g in zip(saved["param_groups"], mine, strict=True)]}
            )
    except (KeyError, RuntimeError, ValueError) as e:
        raise SystemExit(f"error: {args.resume} does not fit these settings ({str(e).splitlines()[0]})") from None
    if args.seed == ckpt["args"]["seed"]:  # rng_state's; older checkpoints hold every GPU's: GPU 0's is taken
        torch.set_rng_state(ckpt["rng"]["cpu"])
        if device.type == "cuda" and ckpt["rng"]["cuda"]:
            torch.cuda.set_rng_state(ckpt["rng"]["cuda"][0], device)  # the training GPU's state, onto this run's
    return ckpt["iter"], ckpt["seconds"], ckpt["fixed_z"].to(device)


def rng_state(device):
    """The random state a checkpoint holds: the CPU's, and on CUDA the training device's only."""
    return {"cpu": torch.get_rng_state(), "cuda": [torch.cuda.get_rng_state(device)] if device.type == "cuda" else []}


def describe(args, ckpt, x, device):
    """The start-up line: data, device, iterations, on --resume the checkpoint and the flags changed, --out."""
    data = f"{args.dataset} {args.data_root}" if args.dataset == "folder" else args.dataset
    line = [] if x is None else [f"{data}: {len(x)} images, {x.shape[1]} channel(s), {args.size}x{args.size}"]
    line += [f"on {device}"] + ([] if x is None else [f"iterations {ckpt['iter'] if ckpt else 0} to {args.iters}"])
    if ckpt:
        old = {k: v for k, v in ckpt["args"].items() if k not in NOT_INHERITED}  # those are this run's
        new = [f"--{k.replace('_', '-')} {v} -> {getattr(args, k)}" for k, v in old.items() if getattr(args, k, v) != v]
        line.append(f"resumed from {args.resume} at iteration {ckpt['iter']} (changed: {', '.join(new) or 'none'})")
    return "; ".join(line + [f"outputs in {args.out}"])


class EMA:
    """An eval-mode copy of `model` following it as an exponential moving average (Yazici et al. 2019, 1806.04498):
    update(n) after step n sets avg <- d avg + (1 - d) model, d = min(decay, (1 + n) / (10 + n)) (TensorFlow's
    warm-up: 0.999 at n = 8,990). It only reads the model."""

    def __init__(self, model, decay):
        self.model, self.decay = copy.deepcopy(model).eval().requires_grad_(False), decay
        self.pairs = list(zip(self.model.state_dict().values(), model.state_dict().values()))  # shared storage

    @torch.no_grad()
    def update(self, n):
        d = min(self.decay, (1 + n) / (10 + n))
        for avg, cur in self.pairs:  # lerp with weight 1 gives cur exactly; BatchNorm's num_batches_tracked copied
            avg.lerp_(cur, 1 - d) if avg.is_floating_point() else avg.copy_(cur)


class CudaGraphed:
    """step(*a) as a CUDA graph if enabled. Per n_critic (the last argument): `warmup` eager calls on a side stream,
    then one captured and replayed, then replays. Parameters, capturable optimizer state, data and statistics must
    exist before the first call and change only in place. UNTESTED on a GPU so far: off by default."""

    def __init__(self, step, enabled, warmup=3):
        self.step, self.enabled, self.warmup, self.graphs, self.calls = step, enabled, warmup, {}, {}
        self.stream = torch.cuda.Stream() if enabled else None

    def __call__(self, *a):
        if not self.enabled:
            return self.step(*a)
        key = a[-1]
        if key not in self.graphs:
            self.stream.wait_stream(torch.cuda.current_stream())
            self.calls[key] = self.calls.get(key, 0) + 1
            if self.calls[key] <= self.warmup:
                with torch.cuda.stream(self.stream):
                    self.step(*a)
            else:
                self.graphs[key] = torch.cuda.CUDAGraph()
                with torch.cuda.graph(self.graphs[key], stream=self.stream):
                    self.step(*a)
            torch.cuda.current_stream().wait_stream(self.stream)
        if key in self.graphs:
            self.graphs[key].replay()


class Stop:
    """with Stop() as stop: SIGINT and SIGTERM only set stop.signal (the loop saves); a second one stops at once."""

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
    """metrics.csv and .png, rewritten atomically; resumed, it starts from the checkpoint folder's rows up to it."""

    def __init__(self, out, columns, start_iter, resume=None):
        self.path, self.columns, self.rows = os.path.join(out, "metrics"), ["iter", *columns, "seconds"], []
        old = resume and os.path.join(os.path.dirname(resume), "metrics.csv")
        if old and os.path.exists(old):
            with open(old) as f:
                self.rows = [[float(v) for v in r] for r in list(csv.reader(f))[1:] if int(r[0]) <= start_iter]
            self.append()  # rows past the checkpoint go now, not at the first report

    def append(self, *row):
        self.rows += row
        with open(self.path + ".csv.tmp", "w", newline="") as f:
            csv.writer(f).writerows([self.columns, *([int(r[0]), *(f"{v:.6g}" for v in r[1:])] for r in self.rows)])
        os.replace(self.path + ".csv.tmp", self.path + ".csv")
        if self.rows:
            self.plot(self.path + ".png.tmp")
            os.replace(self.path + ".png.tmp", self.path + ".png")
        elif os.path.exists(self.path + ".png"):  # a resume from before the first report: no curve yet
            os.remove(self.path + ".png")

    def plot(self, path, w=480, h=170):
        """A panel per metric against iter: its last value above, min and max at the left, iterations below."""
        img, its = Image.new("RGB", (w, h * (len(self.columns) - 2)), "white"), [r[0] for r in self.rows]
        draw, x0, x1 = ImageDraw.Draw(img), its[0], max(its[-1], its[0] + 1)
        for k, name in enumerate(self.columns[1:-1]):
            ys, top, bottom = [r[k + 1] for r in self.rows], k * h + 18, k * h + h - 18  # rows are finite
            pad = 0 if max(ys) > min(ys) else abs(ys[0]) / 10 or 1  # a flat series sits mid-panel
            lo, hi = min(ys) - pad, max(ys) + pad
            xy = [
                (50 + (i - x0) / (x1 - x0) * (w - 60), bottom - (y - lo) / (hi - lo) * (bottom - top))
                for i, y in zip(its, ys)
            ]
            draw.rectangle([50, top, w - 8, bottom], outline="gray")
            draw.text((50, top - 14), f"{name} = {ys[-1]:.4g}   (iter {its[-1]:.0f})", fill="black")
            draw.text((2, top), f"{hi:.3g}", fill="gray")
            draw.text((2, bottom - 11), f"{lo:.3g}", fill="gray")
            draw.text((50, bottom + 4), f"{x0:.0f}", fill="gray")  # the iteration axis: first and last
            draw.text((w - 8 - 6 * len(f"{its[-1]:.0f}"), bottom + 4), f"{its[-1]:.0f}", fill="gray")
            draw.line(xy, fill="navy", width=2)
            draw.ellipse([xy[-1][0] - 3, xy[-1][1] - 3, xy[-1][0] + 3, xy[-1][1] + 3], fill="navy")  # the last row
        img.save(path, "PNG")

"""Why does cppn_wgan_gp.py learn slower than wgan_gp.py? Generator variants, probes and scored training runs.

    python tools/cppn_lab.py probe DIGITS [VARIANT ...]        # init statistics and a fixed-z fitting race
    python tools/cppn_lab.py gan DIGITS VARIANT [--iters 1500] # train through main(), score every --every
    python tools/cppn_lab.py gan DIGITS VARIANT --out DIR      # keep the run in DIR/VARIANT; go on from it later
    python tools/cppn_lab.py grid DIR wgan_gp script script*1 --size 32 --iters 1000 --every 250 --jobs 12

DIGITS is a folder from `python tools/digits.py make` (or `make --set shapes`). `gan` prints, for G and for its
weight average, the FID of 1,000 samples in the classifier's features and the modes: classes holding >= 5% of them.
`grid` runs `gan` for every set (DIR/digits, DIR/shapes: made when missing), critic width, seed and name, --jobs
processes at once (each on the default device: a GPU when there is one), appends their lines to DIR/grid.log and
prints a table: per name, set and width, at each report, the fewest modes of G over the seeds and its largest FID
ratio to wgan_gp.py's run of the same set, width and seed. A run that is done is not rerun.
A VARIANT is a name from VARIANTS (or "dcgan", wgan_gp.py's generator, for comparison; with `gan`, "wgan_gp" runs
wgan_gp.py itself, "script" cppn_wgan_gp.py as it is and "script*C" cppn_wgan_gp.py with --cppn-lr-mul C; "script*C,D"
takes C up to the first report, then D, and so on, the last to the end: a step-size schedule by resuming;
"script+RULE" or "script*C+RULE" patches in a rule of STEP_RULES (step sizes by layer), of ADAM_RULES or OPT_RULES (the
CPPN's Adam; Lookahead, optimism) or of model_rule (the CPPN's first layer, or other initial weights), "script+R1+R2"
two of them; any name can end in ":FLAG=V,..." (e.g. "script:coord-scale=3"), its own script flags).
"base" is the layout of Ha's random-art CPPN (raw x, y, r at s = 8 and z into the first of four tanh layers) with
PyTorch's default initialisation, which cppn_wgan_gp.py had before the Fourier features and FiLM. Runs use one
thread (--threads); give each its own process to run several side by side.
"""

import argparse
import contextlib
import io
import itertools
import os
import subprocess
import sys
import tempfile
import threading
from concurrent.futures import ThreadPoolExecutor

import torch
import torch.nn as nn
import torch.nn.functional as F

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path[:0] = [ROOT, os.path.join(ROOT, "tools")]

import digits  # noqa: E402

import cppn_wgan_gp  # noqa: E402
import wgan_gp  # noqa: E402


class CPPN(nn.Module):
    """cppn_wgan_gp.Generator's per-pixel network, with the choices under study as options.
    cond: how z enters: "first" (added before the first tanh only), "every" (a projection of z added before
    every tanh), "film" (every hidden pre-activation scaled by 1 + g(z) and shifted by b(z)).
    init: "torch" (PyTorch's default, U(+-1/sqrt(fan_in))), "tanh" (N(0, 1/fan_in) on every layer, and the
    first layer's z and coordinate parts each scaled to variance 1/2)."""

    def __init__(self, z_dim, channels, size, width, depth=3, scale=8.0, cond="first", init="torch", fourier=0,
                 sigma=3.0, film0=False, zmap=0, act="tanh", filmout=0.0):  # fmt: skip
        super().__init__()
        self.fourier, self.act = fourier, act
        zin = z_dim
        if zmap:  # a mapping MLP z -> w (StyleGAN, CIPS, pi-GAN); w feeds fc_z and the FiLM layers
            layers = []
            for _ in range(zmap):
                layers += [nn.Linear(zin, 256), nn.LeakyReLU(0.2)]
                zin = 256
            self.zmap = nn.Sequential(*layers)
        else:
            self.zmap = nn.Identity()
        if fourier:  # [sin, cos](B (x, y)), B ~ N(0, sigma^2) per unit of the (-1, 1) grid, fixed
            self.register_buffer("B", torch.randn(2, fourier) * sigma)
            scale = 1.0
        self.film0 = nn.Linear(zin, width) if film0 else None
        self.filmout = nn.Linear(zin, width) if filmout else None  # z -> g: out(h * (1 + g)), a per-sample readout
        self.channels, self.size, self.width, self.scale, self.cond = channels, size, width, scale, cond
        self.fc_z = nn.Linear(zin, width)
        self.fc_xyr = nn.Linear(2 * fourier if fourier else 3, width, bias=False)
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        k = {"first": 0, "every": 1, "film": 2}[cond]
        self.zmod = nn.ModuleList(nn.Linear(zin, k * width) for _ in range(depth if k else 0))
        self.out = nn.Linear(width, channels)
        if init == "tanh":
            for m in [self.fc_z, *self.hidden, self.out, *self.zmod]:
                nn.init.normal_(m.weight, 0, m.in_features**-0.5)
                nn.init.zeros_(m.bias)
            nn.init.normal_(self.fc_z.weight, 0, (2 * zin) ** -0.5)  # Var(W_z z) = 1/2 for z ~ N(0, I)
            for m in self.zmap.modules():  # Kaiming for LeakyReLU(0.2): w keeps z's scale
                if isinstance(m, nn.Linear):
                    nn.init.normal_(m.weight, 0, (2 / 1.04 / m.in_features) ** 0.5)
                    nn.init.zeros_(m.bias)
            r2 = 2 * scale**2 / 3  # E[x^2 + y^2] on the grid; Var(W_xyr xyr) = 1/2
            nn.init.normal_(self.fc_xyr.weight, 0, (2 * (r2 + r2)) ** -0.5 if not fourier else fourier**-0.5)
            if filmout:
                nn.init.normal_(self.filmout.weight, 0, filmout * zin**-0.5)
                nn.init.zeros_(self.filmout.bias)
            if film0:
                nn.init.normal_(self.film0.weight, 0, 0.1 * zin**-0.5)
                nn.init.zeros_(self.film0.bias)
            for m in self.zmod:  # film: gamma starts at 1 + small; every: like a second z input
                if cond == "film":
                    nn.init.normal_(m.weight, 0, 0.1 * m.in_features**-0.5)

    def forward(self, z, size=None, chunk=None):
        size = size or self.size
        c = (torch.arange(size, device=z.device) * 2 + 1) / size - 1
        y, x = torch.meshgrid(c * self.scale, c * self.scale, indexing="ij")
        xyr = torch.stack([x, y, (x**2 + y**2).sqrt()], -1).view(-1, 3)
        if self.fourier:
            xyr = xyr[:, :2] @ self.B
            xyr = torch.cat([xyr.sin(), xyr.cos()], -1)
        z = self.zmap(z)  # w (z itself without a mapping network)
        act = torch.sin if self.act == "sin" else torch.tanh
        h_z = self.fc_z(z)[:, None]
        g0 = 1 + self.film0(z)[:, None] if self.film0 is not None else 1
        mods = [m(z)[:, None] for m in self.zmod]
        g_out = 1 + self.filmout(z)[:, None] if self.filmout is not None else 1
        chunk = chunk or max(1, 2**24 // (z.size(0) * self.width))
        out = []
        for p in xyr.split(chunk):
            h = act(h_z + g0 * self.fc_xyr(p))
            for i, lin in enumerate(self.hidden):
                a = lin(h)
                if self.cond == "every":
                    a = a + mods[i]
                elif self.cond == "film":
                    g, b = mods[i].chunk(2, -1)
                    a = a * (1 + g) + b
                h = act(a)
            out.append(torch.tanh(self.out(h * g_out)))
        return torch.cat(out, 1).transpose(1, 2).reshape(z.size(0), self.channels, size, size)


VARIANTS = {  # name -> CPPN options (scale is --coord-scale's, 8 unless set here)
    "base": {},
    "tanh-init": {"init": "tanh"},
    "z-every": {"cond": "every"},
    "film": {"cond": "film"},
    "z-every+tanh-init": {"cond": "every", "init": "tanh"},
    "film+tanh-init": {"cond": "film", "init": "tanh"},
    "film0+tanh-init": {"cond": "film", "init": "tanh", "film0": True},
    "fourier64+film+tanh-init": {"cond": "film", "init": "tanh", "fourier": 64},
    "fourier64s1+film+tanh-init": {"cond": "film", "init": "tanh", "fourier": 64, "sigma": 1.0},
    "fourier64+tanh-init": {"init": "tanh", "fourier": 64},
    "fourier64s2+film+tanh-init": {"cond": "film", "init": "tanh", "fourier": 64, "sigma": 2.0},
    "fourier128+film+tanh-init": {"cond": "film", "init": "tanh", "fourier": 128},
    "fourier64s5+film+tanh-init": {"cond": "film", "init": "tanh", "fourier": 64, "sigma": 5.0},
    "fourier64+film0+film+tanh-init": {"cond": "film", "init": "tanh", "fourier": 64, "film0": True},
    "fourier64+film+tanh-init+zmap2": {"cond": "film", "init": "tanh", "fourier": 64, "zmap": 2},
    "fourier64+film+tanh-init+sin": {"cond": "film", "init": "tanh", "fourier": 64, "act": "sin"},
    "fourier64s8+film+tanh-init": {"cond": "film", "init": "tanh", "fourier": 64, "sigma": 8.0},
    "fourier64+film+tanh-init+filmout": {"cond": "film", "init": "tanh", "fourier": 64, "filmout": 0.1},
    "fourier64+film+tanh-init+filmout1": {"cond": "film", "init": "tanh", "fourier": 64, "filmout": 1.0},
}


STEP_RULES = {  # "script*C+RULE": factors on the CPPN's step size by parameter name (biases take their layer's)
    "rel": {"fc_xy": 2**0.5, "fc_z": 2**-0.5, "film": 0.1},  # each layer's step in proportion to its init std
    "zslow": {"fc_z": 0.3, "film": 0.3},  # the layers z enters by (W_z, FiLM) at 0.3x the rest's step
}


ADAM_RULES = {  # "script+RULE": the CPPN's Adam with other settings (the critic's: as is)
    "b2g": {"betas": (0.0, 0.99)},  # beta2 0.99
    "b1g": {"betas": (0.5, 0.9)},  # momentum: beta1 0.5 (DCGAN's)
}


class LookaheadAdam(torch.optim.Adam):
    """Adam, and every k of its steps each weight w pulled to a slow copy: slow <- slow + a (w - slow), w <- slow
    (Lookahead, Zhang et al. 2019, arXiv:1907.08610). The slow copies are optimizer state: checkpoints resume them."""

    def __init__(self, params, k=5, a=0.5, **kw):
        super().__init__(params, **kw)
        self.k, self.a = k, a

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"]]
        first = {p: p.detach().clone() for p in params if "slow" not in self.state[p]}  # the weights before step 1
        loss = super().step(closure)
        for p in params:
            s = self.state[p]
            s.setdefault("slow", first.get(p))
            if int(s["step"]) % self.k == 0:
                s["slow"] += self.a * (p - s["slow"])
                p.copy_(s["slow"])
        return loss


class OptimisticAdam(torch.optim.Adam):
    """Optimistic Adam (Daskalakis et al. 2018, arXiv:1711.00141): w <- w - 2 alpha u_t + alpha u_(t-1), u_t Adam's
    step direction. Adam's own step d_t = -alpha u_t is taken, then d_t - d_(t-1) more; d_t is kept as optimizer state
    (checkpoints resume it)."""

    @torch.no_grad()
    def step(self, closure=None):
        params = [p for g in self.param_groups for p in g["params"] if p.grad is not None]
        before = [p.detach().clone() for p in params]
        loss = super().step(closure)
        for p, w in zip(params, before):
            s = self.state[p]
            d = p - w
            p += d - s.get("last", torch.zeros_like(d))
            s["last"] = d
        return loss


OPT_RULES = {  # "script+RULE": the CPPN's Adam as another optimizer
    "la": (LookaheadAdam, {"k": 5, "a": 0.5}),  # Lookahead
    "oadam": (OptimisticAdam, {}),  # optimism
}


class RowNorm(nn.Module):
    """W = gain * V / ||V's rows||: each unit of W x keeps variance gain^2 for x ~ N(0, I), however V is trained
    (weight normalization, Salimans & Kingma 2016, with a fixed gain: the analytic BatchNorm of a linear map of z)."""

    def __init__(self, gain):
        super().__init__()
        self.gain = gain

    def forward(self, v):
        return self.gain * v / v.norm(dim=1, keepdim=True)


MODEL_RULES = {  # "script*C+RULE": the script's CPPN with its first layer's rows at a fixed norm
    "znorm": {"fc_z": 2**-0.5},  # each unit of W_z z keeps variance 1/2 (z added: z's share of the first layer's)
    "znorm+xynorm": {"fc_z": 2**-0.5, "fc_xy": 2**0.5},  # and the pixel's ~1
}


INIT_RULES = {  # "script+RULE": the script's CPPN with other initial weights
    "film03": lambda G: [nn.init.normal_(m.weight, 0.0, 0.3 * m.in_features**-0.5) for m in G.film],  # FiLM's std 3x
    "film1": lambda G: [nn.init.normal_(m.weight, 0.0, m.in_features**-0.5) for m in G.film],  # gamma-1, beta ~ N(0, 1)
    "out0": lambda G: nn.init.zeros_(G.out.weight),  # every image starts flat gray
}


class XYR:
    """script+xyr: Ha's raw x, y, r (divided by s) beside the Fourier features in the first layer, each part with
    half of its input variance (Fourier features: N(0, 1/(2F)) weights; E[(x^2 + y^2 + r^2) / s^2] = 4/3)."""

    def __init__(self, *a, **k):
        super().__init__(*a, **k)
        f = self.freq.size(1)
        self.fc_xy = nn.Linear(2 * f + 3, self.width, bias=False).to(self.freq.device)
        with torch.no_grad():
            nn.init.normal_(self.fc_xy.weight[:, : 2 * f], 0.0, (2 * f) ** -0.5)
            nn.init.normal_(self.fc_xy.weight[:, 2 * f :], 0.0, (8 / 3) ** -0.5)

    def pixels(self, xy, h_z, film):
        a, u = xy @ self.freq, xy / self.scale
        h = torch.tanh(h_z * self.fc_xy(torch.cat([a.sin(), a.cos(), u, u.norm(dim=-1, keepdim=True)], -1)))
        for fc, (g, b) in zip(self.hidden, film):
            h = torch.tanh(fc(h) * (1 + g) + b)
        return torch.tanh(self.out(h))


ARCH_RULES = {"xyr": XYR}  # "script+RULE": the script's CPPN with another first layer


def model_rule(module, rule):
    """Patch `module`'s Generator: the layers of `rule` get RowNorm parametrizations, each row's norm fixed at the
    expected norm of an initial row, or (INIT_RULES) other initial weights, or (ARCH_RULES) another first layer.
    (At commit 01f9afa, where z was still added in the first layer, "mult" made it the product cppn_wgan_gp.py now
    has.)"""

    if rule in ARCH_RULES:
        module.Generator = type("Generator", (ARCH_RULES[rule], module.Generator), {})
        return

    class Generator(module.Generator):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            if rule in INIT_RULES:
                with torch.no_grad():
                    INIT_RULES[rule](self)
                return
            for key, gain in MODEL_RULES[rule].items():
                nn.utils.parametrize.register_parametrization(getattr(self, key), "weight", RowNorm(gain))

    module.Generator = Generator


def step_rule(module, rule):
    """Patch `module`'s Generator and torch.optim.Adam so that the CPPN's Adam has one group per factor of `rule`
    (STEP_RULES), ADAM_RULES' settings or OPT_RULES' optimizer."""
    factors, settings, real = STEP_RULES.get(rule, {}), ADAM_RULES.get(rule, {}), torch.optim.Adam
    la = OPT_RULES.get(rule)

    class Generator(module.Generator):
        def __init__(self, *a, **k):
            super().__init__(*a, **k)
            for n, p in self.named_parameters():
                p.lab_factor = next((f for key, f in factors.items() if n.startswith(key)), 1.0)

    def adam(params, lr, **k):
        params = list(params)
        if not hasattr(params[0], "lab_factor"):  # the critic's
            return real(params, lr=lr, **k)
        fs = sorted({p.lab_factor for p in params})
        groups = [{"params": [p for p in params if p.lab_factor == f], "lr": lr * f} for f in fs]
        return la[0](groups, lr=lr, **la[1], **k) if la else real(groups, lr=lr, **k | settings)

    module.Generator, torch.optim.Adam = Generator, adam


def make_generator(name, z_dim, channels, size, width, depth=3, scale=8.0):
    if name == "dcgan":
        return wgan_gp.Generator(z_dim, channels, size, 64)
    return CPPN(z_dim, channels, size, width, depth, scale, **VARIANTS[name])


def load_digits(root, size, n=None, split="held_out"):
    """Digits as the scripts see them at `size` (Pillow bicubic, as the folder loader), in [-1, 1]."""
    x, _ = digits.load(os.path.join(root, split), n)
    if size != 32:
        x = F.interpolate(x, size=size, mode="bicubic", antialias=True).clamp(-1, 1)
    return x


@torch.no_grad()
def init_stats(G, z_dim, size, n=64):
    """Per tanh layer: std of its input and the share of units with |tanh| > 0.9; then how much the output
    varies over the pixels of one image versus over z at one pixel."""
    torch.manual_seed(0)
    z, rows, acts = torch.randn(n, z_dim), [], []
    hooks = [m.register_forward_hook(lambda m, i, o: acts.append(i[0])) for m in G.modules() if isinstance(m, nn.Tanh)]
    if isinstance(G, CPPN):  # functional tanh: record inputs by wrapping torch.tanh
        real = torch.tanh
        torch.tanh = lambda a: (acts.append(a), real(a))[1]
    try:
        x = G(z, size) if isinstance(G, CPPN) else G(z)
    finally:
        if isinstance(G, CPPN):
            torch.tanh = real
        for h in hooks:
            h.remove()
    for a in acts:
        rows.append(f"{a.std():.2f}/{(a.tanh().abs() > 0.9).float().mean():.2f}")
    return " ".join(rows), x.std((2, 3)).mean().item(), x.std(0).mean().item()


def fit_race(G, z_dim, target, steps, lr, bs=64):
    """Regress a fixed z_i onto target image i with Alg. 1's Adam (alpha 1e-4, betas (0, 0.9)): how fast
    can the generator make its output depend on z? Returns the MSE after each quarter of the steps."""
    torch.manual_seed(1)
    z = torch.randn(len(target), z_dim)
    opt = torch.optim.Adam(G.parameters(), lr=lr, betas=(0.0, 0.9))
    out = []
    for t in range(1, steps + 1):
        i = torch.randint(len(target), (bs,))
        loss = F.mse_loss(G(z[i]), target[i])
        opt.zero_grad()
        loss.backward()
        opt.step()
        if t % (steps // 4) == 0:
            with torch.no_grad():
                out.append(F.mse_loss(torch.cat([G(c) for c in z.split(256)]), target).item())
    return out


def probe(root, names, size=16, width=128, steps=400, lr=1e-4, n=256):
    target = load_digits(root, size, n)
    print(f"fixed-z race: {n} held-out digits at {size}x{size}, {steps} Adam steps; MSE of the mean image "
          f"{F.mse_loss(target.mean(0, keepdim=True).expand_as(target), target):.4f}")  # fmt: skip
    for name in names:
        torch.manual_seed(0)
        G = make_generator(name, 128, 1, size, width)
        layers, px, zz = init_stats(G, 128, size)
        race = fit_race(G, 128, target, steps, lr)
        print(f"{name:20s} tanh in std/sat: {layers} | std over pixels {px:.3f}, over z {zz:.3f} | "
              f"fit MSE {' '.join(f'{v:.4f}' for v in race)}", flush=True)  # fmt: skip


def gan(root, name, iters, every, size, extra, seed=0, out=None):
    """Train through the script's own main() (the variant patched in), score with digits.py after every `every`.
    With `out` holding a checkpoint from an earlier call, go on from it (resumes are exact: same result)."""
    module = wgan_gp if name == "wgan_gp" else cppn_wgan_gp
    label, (name, _, flags) = name, name.partition(":")  # "NAME:FLAG=V,...": NAME with --FLAG=V ... of its own
    extra = [f"--{f}" for f in flags.split(",") if f] + extra
    name, _, rule = name.partition("+") if name.startswith("script") else (name, "", "")
    muls = name[7:].split(",") if name.startswith("script*") else []  # "script*C,D": C to the first report, then D
    known = STEP_RULES | ADAM_RULES | OPT_RULES | MODEL_RULES | INIT_RULES | ARCH_RULES
    for r in [rule] if rule in known else rule.split("+") if rule else []:  # "xyr+b2g": one rule, then the other
        (step_rule if r in STEP_RULES | ADAM_RULES | OPT_RULES else model_rule)(module, r)
    if muls:  # "script*C": cppn_wgan_gp.py as it is, with --cppn-lr-mul C
        extra = ["--cppn-lr-mul", muls[0]] + extra
    elif name not in ("wgan_gp", "script"):  # "script": cppn_wgan_gp.py as it is
        extra = ["--coord-scale", "8"] + extra  # Ha's s (the Fourier variants set their own)
        module.Generator = lambda z_dim, ch, s, w, depth=3, scale=8.0: make_generator(
            name, z_dim, ch, s, w, depth, scale
        )
    net = digits.classifier(root)
    ref = digits.stats(net, F.interpolate(load_digits(root, size, 1000), size=32, mode="bicubic").clamp(-1, 1))
    out = out or tempfile.mkdtemp()
    path = os.path.join(out, "checkpoint.pt")
    start = torch.load(path, weights_only=False)["iter"] if os.path.exists(path) else 0
    base = ["--dataset", "folder", "--data-root", os.path.join(root, "train"), "--size", str(size), "--seed", str(seed)]
    for done in range(start - start % every + every, iters + 1, every):
        mul = ["--cppn-lr-mul", muls[min(done // every - 1, len(muls) - 1)]] if len(muls) > 1 else []  # on resuming
        argv = ["--resume", path] + mul if os.path.exists(path) else base + extra + ["--out", out]
        with contextlib.redirect_stdout(io.StringIO()) as log:
            module.main(argv + ["--iters", str(done), "--log-every", str(every), "--sample-every", str(iters)])
        line = [s for s in log.getvalue().splitlines() if s.startswith("iter")][-1]
        ckpt = torch.load(path, weights_only=False)
        a = ckpt["args"]
        G = module.Generator(a["z_dim"], 1, size, a["cppn_width"] if name != "wgan_gp" else a["width"],
                             *((a["cppn_depth"], a["coord_scale"]) if name != "wgan_gp" else ()))  # fmt: skip
        scores = []
        for key in ("G", "G_ema"):  # G itself, and the weight average samples come from (--ema; absent before it)
            if key not in ckpt:
                continue
            G.load_state_dict(ckpt[key])
            G.eval()
            with torch.no_grad():
                g = torch.Generator().manual_seed(123)
                x = G(torch.randn(1000, a["z_dim"], generator=g))
                x = (x * 127.5 + 127.5).round().clamp(0, 255) / 127.5 - 1  # as the PNGs --generate writes
                x = F.interpolate(x, size=32, mode="bicubic").clamp(-1, 1)
                modes = (torch.bincount(net(x).argmax(1), minlength=10) >= 0.05 * len(x)).sum().item()
                fid = digits.frechet(digits.stats(net, x), ref)
                scores.append(f"{'score' if key == 'G' else 'ema score'} {fid:.1f} modes {modes}")
        w = line.split("w_dist ")[1].split()[0]
        print(f"{label} {' '.join(extra + mul)} | iter {done} | {' | '.join(scores)} | w_dist {w} | {out}", flush=True)


def grid(out, names, sets, widths, seeds, size, iters, every, jobs):
    """Each (set, width, seed, name) as a `gan` process, jobs at once, its lines tagged into OUT/grid.log; the table."""
    for kind in sets:
        if not os.path.exists(os.path.join(out, kind, "classifier.pt")):
            digits.make(os.path.join(out, kind), 2000, kind)
            digits.classifier(os.path.join(out, kind))
    log, lock = os.path.join(out, "grid.log"), threading.Lock()

    def run(key):
        kind, width, seed, name = key
        argv = [sys.executable, os.path.abspath(__file__), "gan", os.path.join(out, kind), name, "--size", str(size)]
        argv += ["--iters", str(iters), "--every", str(every), "--seed", str(seed), "--extra", f"--width {width}"]
        argv += ["--out", os.path.join(out, "runs", f"{kind}-{size}-w{width}-seed{seed}")]
        env = os.environ | {"OMP_NUM_THREADS": "1"}
        with subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env) as p:
            for line in p.stdout:  # each report into the log as it comes: a grid stopped and rerun loses none
                with lock, open(log, "a") as f:
                    print(line := f"{kind} {size} {width} {seed} {name} | {line.rstrip()}", file=f, flush=True)
                print(line, flush=True)
            if p.wait():
                print(f"{key}: exit {p.returncode}: {p.stderr.read().strip()[-500:]}", flush=True)

    with ThreadPoolExecutor(jobs) as pool:
        list(pool.map(run, itertools.product(sets, widths, seeds, names)))
    table(log, size)


def table(log, size):
    """grid.log -> per (name, set, width): at each report 'fewest modes of G, largest FID / wgan_gp.py's' over seeds."""
    cell = {}  # (kind, width, seed, name, iter) -> (fid, modes) of G; a later line replaces an earlier one
    with open(log) as f:
        lines = f.read().splitlines()
    for line in lines:
        tag, rest = line.split(" | ", 1)
        kind, s, width, seed, name = tag.split()
        if int(s) == size:
            parts = rest.split(" | ")  # VARIANT FLAGS | iter N | score FID modes M | ...
            _, fid, _, modes = parts[2].split()
            cell[kind, width, seed, name, int(parts[1].split()[1])] = float(fid), int(modes)
    reports = sorted({k[-1] for k in cell})
    print(f"| name | set | width | {' | '.join(map(str, reports))} | seeds | 8 modes from 500 | 2x from 1,000 |")
    print("|---" * (len(reports) + 6) + "|")
    for name, kind, width in sorted({(k[3], k[0], k[1]) for k in cell}, key=lambda k: (k[0] != "wgan_gp", k)):
        seeds = sorted({k[2] for k in cell if k[3] == name and k[:2] == (kind, width)})
        row, marks = [], {500: [], 1000: []}  # per report from 500 (1,000) on: "yes", "no" or "?" (a run missing)
        for r in reports:
            got = [cell.get((kind, width, s, name, r)) for s in seeds]
            base = [cell.get((kind, width, s, "wgan_gp", r)) for s in seeds]
            pairs = [(g[0], b[0]) for g, b in zip(got, base) if g and b]
            modes = min((g[1] for g in got if g), default=None)
            ratio = max((f / max(b, 1e-9) for f, b in pairs), default=None)
            row.append("" if modes is None else f"{modes}" + ("" if ratio is None else f", {ratio:.1f}x"))
            if r >= 500 and modes is not None:
                marks[500].append("no" if modes < 8 else "?" if None in got else "yes")
            if r >= 1000 and modes is not None:
                marks[1000].append("no" if ratio and ratio > 2 else "?" if len(pairs) < len(seeds) else "yes")
        verdict = {t: next((v for v in ("no", "?", "yes") if v in m), "-") for t, m in marks.items()}
        print(f"| {name} | {kind} | {width} | {' | '.join(row)} | {len(seeds)} | {verdict[500]} | {verdict[1000]} |")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("cmd", choices=["probe", "gan", "grid"])
    p.add_argument("root")
    p.add_argument("names", nargs="*")
    p.add_argument("--size", type=int, default=16)
    p.add_argument("--iters", type=int, default=1500)
    p.add_argument("--every", type=int, default=500)
    p.add_argument("--steps", type=int, default=400)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--lr", type=float, default=1e-4, help="probe: the race's Adam alpha")
    p.add_argument("--extra", default="--width 32", help="more script flags (default: --width 32)")
    p.add_argument("--threads", type=int, default=1, help="intra-op threads (default 1: one run per core)")
    p.add_argument("--out", help="gan: the run's folder; one holding a checkpoint is continued (default: a new one)")
    p.add_argument("--sets", nargs="+", default=["digits", "shapes"], help="grid: the data sets (default: both)")
    p.add_argument("--widths", nargs="+", type=int, default=[16, 64], help="grid: critic widths (default: 16 64)")
    p.add_argument("--seeds", nargs="+", type=int, default=[0, 1, 2], help="grid: seeds (default: 0 1 2)")
    p.add_argument("--jobs", type=int, default=os.cpu_count(), help="grid: runs at once (default: one per core)")
    a = p.parse_args()
    torch.set_num_threads(a.threads)
    if a.cmd == "probe":
        probe(a.root, a.names or ["dcgan", *VARIANTS], a.size, steps=a.steps, lr=a.lr)
    elif a.cmd == "grid":
        grid(a.root, a.names, a.sets, a.widths, a.seeds, a.size, a.iters, a.every, a.jobs)
    else:
        for name in a.names:
            saved = cppn_wgan_gp.Generator, wgan_gp.Generator, torch.optim.Adam  # each name patches its own
            gan(a.root, name, a.iters, a.every, a.size, a.extra.split(), a.seed, a.out and os.path.join(a.out, name))
            cppn_wgan_gp.Generator, wgan_gp.Generator, torch.optim.Adam = saved


if __name__ == "__main__":
    main()

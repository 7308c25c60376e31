"""CPPN-WGAN-GP: a CPPN generator (Stanley 2007; as a GAN generator, Ha 2016) trained with WGAN-GP (Gulrajani
et al., "Improved Training of Wasserstein GANs", 2017, arXiv:1704.00028, Algorithm 1).

    python cppn_wgan_gp.py --dataset mnist
    python cppn_wgan_gp.py --resume runs/cppn_wgan_gp-mnist-28/checkpoint.pt --render 1024

The generator maps one pixel's coordinates (x, y) and z to that pixel's value, so a generator trained at
28x28 draws the same image at any resolution. The critic and the training are wgan_gp.py's, at other step sizes.

Deviations from the paper / official code:
- The critic, the training and their deviations are wgan_gp.py's (see its header), but for the step sizes below.
- Not Ha's CPPN: his codes feed raw x, y, r and z into softplus or tanh layers, which learned far slower than
  wgan_gp.py's generator here (the measurements: docs/cppn.md). Each pixel is still a function of its (x, y) and z:
  - (x, y) enter as 128 Fourier features [sin, cos](F (x, y)), F ~ N(0, 1) fixed (Tancik et al. 2020,
    arXiv:2006.10739), x, y in [-s, s], s = 2 (--coord-scale; Ha: raw, s = 8): no saturated first layer;
  - z multiplies them in the first layer, tanh((W_xy features) * sqrt2 W_z z), W_z without a bias (Ha adds z,
    scaled by s): zero mean over z at every pixel, as a DCGAN generator's bias-free first layer, so no pixel pattern
    is free of z there; with z added, G drew one z-free shape against --width 16 (a collapse; multiplied, no run of a
    16x16 grid of two sets and three seeds drew one shape, though some held only 4 of 10 classes at 500: docs/cppn.md);
  - z scales and shifts every hidden tanh layer's input (FiLM, Perez et al. 2017, arXiv:1709.07871);
  - hidden weights N(0, 1/fan_in), the first layer's input variance 1; tanh from the first layer on (Ha's GAN code:
    softplus first).
- The CPPN's Adam alpha is 1e-3 (--lr x --cppn-lr-mul, 2.5e-4 x 4; Alg. 1: 1e-4): Adam moves a weight by about
  alpha, and the CPPN's weights start ~4x larger than the DCGAN generator's; at 1e-4 (z added) it fell 6x behind
  wgan_gp.py.
- The critic's Adam alpha is 2.5e-4 (--lr; Alg. 1: 1e-4): at 1e-4, a tenth of G's, the critic fell behind G and G's
  class proportions swung from one report to the next; at 2.5e-4 G kept 8+ of 10 classes and swung less (a 16x16
  grid, two sets, three seeds, default critic: docs/cppn.md). TTUR (Heusel et al. 2017, arXiv:1706.08500) gives the
  critic the larger step.
- Pixel centres, not linspace(-s, s): drawn at 4S and average-pooled by 4, an image comes close to the one at S.
- A tanh output into [-1, 1], like the data (the known CPPN-WGAN-GP code's CIFAR-10 script: a sigmoid).
- The critic has DCGAN's N(0, 0.02) initialisation; the CPPN has no BatchNorm, so train and eval mode agree.
- Samples come from a moving average of G's weights (--ema 0.999; Yazici et al. 2019, arXiv:1806.04498), not G.
"""

import argparse
import os
import time
from datetime import timedelta
from functools import partial

import torch
import torch.nn as nn
from PIL import GifImagePlugin, Image
from torchvision.transforms.functional import to_pil_image

import data


def split_size(size):
    """size = s0 * 2**k with s0 in 3..7, k >= 1 -> (s0, k): the networks start (or end) at s0 x s0."""
    s0, k = size, 0
    while s0 % 2 == 0 and (s0 > 7 or k == 0):
        s0, k = s0 // 2, k + 1
    if not (3 <= s0 <= 7 and k >= 1):
        valid = sorted({s * 2**j for s in range(3, 8) for j in range(1, 7) if s * 2**j <= 256})
        raise SystemExit(f"error: --size {size} is not s0*2^k (s0 in 3..7, k >= 1); valid: {str(valid)[1:-1]}, ...")
    return s0, k


def dcgan_init(m):
    """Weights ~ N(0, 0.02) (DCGAN, Radford et al. 2015, section 4); BatchNorm scales ~ N(1, 0.02) and biases 0
    as in pytorch/examples' dcgan and the official WGAN code."""
    if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
        nn.init.normal_(m.weight, 0.0, 0.02)
    if isinstance(m, nn.BatchNorm2d):
        nn.init.normal_(m.weight, 1.0, 0.02)
    if getattr(m, "bias", None) is not None:
        nn.init.zeros_(m.bias)


class Generator(nn.Module):
    """CPPN: every pixel alone from its coordinates and z. Fourier features of (x, y) -> tanh(W_xy . * sqrt2 W_z z) ->
    depth tanh layers, each pre-activation scaled and shifted by z (FiLM) -> tanh, in [-1, 1]."""

    def __init__(self, z_dim, channels, size, width, depth=3, scale=2.0, features=64):
        super().__init__()
        self.channels, self.size, self.width, self.scale = channels, size, width, scale
        self.register_buffer("freq", torch.randn(2, features))  # fixed frequencies ~ N(0, 1) per unit of x and y
        self.fc_xy = nn.Linear(2 * features, width, bias=False)  # W_xy [sin, cos](freq (x, y)), once per pixel
        self.fc_z = nn.Linear(z_dim, width, bias=False)  # W_z z, once per sample; no bias: zero mean over z
        self.hidden = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.film = nn.ModuleList(nn.Linear(z_dim, 2 * width) for _ in range(depth))  # z -> (gamma - 1, beta)
        self.out = nn.Linear(width, channels)  # no layer couples pixels
        for m in self.modules():  # N(0, 1/fan_in): pre-activations of variance ~1 through every tanh layer
            if isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0.0, m.in_features**-0.5)
                if m.bias is not None:
                    nn.init.zeros_(m.bias)
        nn.init.normal_(self.fc_xy.weight, 0.0, features**-0.5)  # sin^2 + cos^2 = 1: variance 1 from the pixel
        nn.init.normal_(self.fc_z.weight, 0.0, (2 * z_dim) ** -0.5)  # variance 1/2, times 2 in forward
        for m in self.film:  # gamma ~ 1, beta ~ 0 at the start
            nn.init.normal_(m.weight, 0.0, 0.1 * z_dim**-0.5)

    def forward(self, z, size=None, chunk=None):  # (B, z_dim) -> (B, channels, size, size)
        size = size or self.size
        c = (torch.arange(size, device=z.device) * 2 + 1) / size - 1  # pixel centres in (-1, 1)
        y, x = torch.meshgrid(c * self.scale, c * self.scale, indexing="ij")
        xy = torch.stack([x, y], -1).view(-1, 2)  # (size*size, 2)
        h_z = 2**0.5 * self.fc_z(z)[:, None]  # (B, 1, width): sqrt2 W_z z, variance 1
        film = [m(z)[:, None].chunk(2, -1) for m in self.film]  # per layer (gamma - 1, beta), each (B, 1, width)
        per_pixel = z.size(0) * self.width + 4 * self.fc_xy.in_features  # activations; features, sin, cos, angles
        chunk = chunk or max(1, 2**24 // per_pixel)  # pixels per pass: bounded memory at any size
        out = [self.pixels(p, h_z, film) for p in xy.split(chunk)]  # each (B, pixels, channels)
        return torch.cat(out, 1).transpose(1, 2).reshape(z.size(0), self.channels, size, size)

    def pixels(self, xy, h_z, film):  # (pixels, 2) -> (B, pixels, channels)
        a = xy @ self.freq  # (pixels, features)
        h = torch.tanh(h_z * self.fc_xy(torch.cat([a.sin(), a.cos()], -1)))  # (B, pixels, width): z gates each feature
        for fc, (g, b) in zip(self.hidden, film):
            h = torch.tanh(fc(h) * (1 + g) + b)  # FiLM: z scales and shifts every hidden layer
        return torch.tanh(self.out(h))


class Critic(nn.Module):
    """x -> k stride-2 convs + LeakyReLU(0.2), each halving the side -> one unbounded score (a logit in gan.py)."""

    def __init__(self, channels, size, width):
        super().__init__()
        s0, k = split_size(size)
        Norm = nn.Identity  # section 4: no BatchNorm, the penalty is per sample and BatchNorm couples samples
        c = width
        layers = [nn.Conv2d(channels, c, 4, 2, 1), nn.LeakyReLU(0.2)]  # (B, width, size/2, size/2)
        for _ in range(k - 1):
            layers += [nn.Conv2d(c, 2 * c, 4, 2, 1), Norm(2 * c), nn.LeakyReLU(0.2)]
            c *= 2  # (B, c, s/2, s/2): twice the channels, half the side
        layers += [nn.Flatten(), nn.Linear(c * s0 * s0, 1)]  # (B, c*s0*s0) -> (B, 1)
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, x):  # (B, channels, size, size)
        return self.net(x).view(-1).float()  # (B,), float32 under --bf16 too


def gradient_penalty(critic, x_real, x_fake):
    """E[(||grad_x_hat D(x_hat)||_2 - 1)^2] at x_hat = eps*x_real + (1 - eps)*x_fake, eps ~ U[0, 1] per sample."""
    eps = torch.rand(x_real.size(0), 1, 1, 1, device=x_real.device)  # Alg. 1 l.4: one eps per sample
    x_hat = (eps * x_real + (1 - eps) * x_fake).requires_grad_(True)  # l.6
    (grad,) = torch.autograd.grad(critic(x_hat).sum(), x_hat, create_graph=True)  # graph kept: loss_D needs d/dw
    return ((grad.flatten(1).norm(2, dim=1) - 1) ** 2).mean()  # l.7: norm per sample over C x H x W


def save_gif(frames, path, ms=80):
    """Images in [-1, 1], each (C, H, W), as a looping GIF written a frame at a time from any iterable: memory holds one
    frame. Gray frames share the gray palette; RGB frames each carry their own, as Pillow's own writer makes them."""
    with open(path, "wb") as f:
        for i, frame in enumerate(frames):
            im = to_pil_image(frame.float().mul(127.5).add(127.5).round().clamp(0, 255).to(torch.uint8).cpu())
            im = im if im.mode == "L" else im.convert("P", palette=Image.Palette.ADAPTIVE)
            if i == 0:  # the file's header: size, the first palette, loop forever
                f.write(b"".join(GifImagePlugin.getheader(im, info={"loop": 0})[0]))
            f.write(b"".join(GifImagePlugin.getdata(im, duration=ms, include_color_table=True)))
        f.write(b";")  # the GIF trailer


@torch.no_grad()
def render(G, z, size, out, n=4, steps=6):
    """The first n fixed z drawn at size x size (a PNG grid), and a looping slerp through them (a GIF). Each image is
    drawn alone and each GIF frame written as soon as it is drawn: memory holds the grid and one frame, whatever the
    number of frames."""
    if size < 1:
        raise SystemExit(f"error: --render {size}: the size must be a positive number of pixels")
    os.makedirs(out, exist_ok=True)
    samples = torch.cat([G(z[i : i + 1], size).cpu() for i in range(n)])  # one at a time: bounded memory
    data.save_grid(samples, os.path.join(out, f"render_{size}.png"), nrow=2)
    t = torch.linspace(0, 1, steps + 1, device=z.device)[:-1]  # steps frames from each z to the next
    path = data.slerp(z[:n], z[list(range(1, n)) + [0]], t).flatten(0, 1)  # (n * steps, z_dim), back to the start
    save_gif((G(p[None], size)[0] for p in path), os.path.join(out, f"interpolation_{size}.gif"))
    print(f"wrote render_{size}.png and interpolation_{size}.gif to {out}")


def train_step(G, D, opt_G, opt_D, batches, stats, args, n_critic):
    """Alg. 1, one generator iteration: n_critic critic steps, then one generator step. Adds the logged statistics
    to `stats` in place, on the device, and never waits for the host. --bf16: the forward passes run under bfloat16
    autocast, without its cache of cast weights; the critic's scores, and so the losses and statistics, stay float32."""
    amp = partial(torch.autocast, stats.device.type, torch.bfloat16, bool(args.bf16), cache_enabled=False)
    for t in range(n_critic):  # l.2
        x_real = next(batches)  # x ~ P_r: a fresh real batch for every critic step
        z = torch.randn(args.batch_size, args.z_dim, device=x_real.device)  # l.4: x ~ P_r, z ~ p(z)
        with amp(), torch.no_grad():
            x_fake = G(z)  # x~ <- G(z), detached: this step trains the critic only
        with amp():
            d_real, d_fake = D(x_real).mean(), D(x_fake).mean()
            gp = gradient_penalty(D, x_real, x_fake)  # l.4-6: eps ~ U[0, 1], x^ <- eps x + (1 - eps) x~ (float32)
        loss_D = d_fake - d_real + args.lam * gp  # l.7: D(x~) - D(x) + lam (||grad D(x^)||_2 - 1)^2
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        opt_D.step()  # l.9: w <- Adam(grad_w mean L, w, alpha, beta1, beta2)
    z = torch.randn(args.batch_size, args.z_dim, device=x_real.device)  # l.11: z ~ p(z)
    D.requires_grad_(False)  # the generator step needs no critic weight gradients
    with amp():
        loss_G = -D(G(z)).mean()  # l.12: theta <- Adam(grad_theta mean -D(G(z)), theta, alpha, beta1, beta2)
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()
    D.requires_grad_(True)
    stats += torch.stack([loss_D, loss_G, d_real - d_fake, gp]).detach()  # w_dist = E[D(x)] - E[D(x~)]


def get_args(argv=None):
    p = argparse.ArgumentParser(
        description=__doc__.split("\nDeviations")[0], formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--dataset", default="mnist", help="digits | mnist | cifar10 | stl10 | folder (default: mnist)")
    p.add_argument("--data-root", help="your images (--dataset folder), or where to download (default: data)")
    p.add_argument("--size", type=int, help="image side s0*2^k (default: the data's own, else 64)")
    p.add_argument("--batch-size", type=int, default=64, help="m; Alg. 1: 64")
    p.add_argument("--iters", type=int, default=100000, help="generator iterations to reach (default: 100000)")
    p.add_argument("--n-critic", type=int, default=5, help="critic steps per generator step; Alg. 1: 5")
    p.add_argument("--lr", type=float, default=2.5e-4, help="the critic's Adam alpha (default: 2.5e-4; Alg. 1: 1e-4)")
    p.add_argument("--beta1", type=float, default=0.0, help="Adam beta1; Alg. 1: 0")
    p.add_argument("--beta2", type=float, default=0.9, help="Adam beta2; Alg. 1: 0.9")
    p.add_argument("--lam", type=float, default=10.0, help="gradient penalty weight lambda; Alg. 1: 10")
    p.add_argument("--z-dim", type=int, default=128, help="latent size (default: 128)")
    p.add_argument("--width", type=int, default=64, help="base channel width (default: 64, DCGAN's)")
    p.add_argument("--cppn-width", type=int, default=128, help="CPPN hidden units (CPPN-GAN code: 128)")
    p.add_argument("--cppn-depth", type=int, default=3, help="CPPN tanh layers after the first (CPPN-GAN: 3)")
    p.add_argument("--cppn-lr-mul", type=float, default=4.0, help="CPPN Adam alpha = --lr * this (default: 4)")
    p.add_argument("--coord-scale", type=float, default=2.0, help="x, y in [-s, s] (default: 2; CPPN-GAN code: 8)")
    p.add_argument("--ema", type=float, default=0.999, help="samples from G's weight average (default: 0.999; 0: G)")
    p.add_argument("--device", default="auto", help="auto | cpu | cuda | cuda:N (default: auto)")
    p.add_argument("--cuda-graph", action=argparse.BooleanOptionalAction, help="CUDA graphs (default: off; untested)")
    p.add_argument("--bf16", action=argparse.BooleanOptionalAction, help="bfloat16 forward passes (default: off)")
    p.add_argument("--seed", type=int, default=0, help="random seed (default: 0)")
    p.add_argument("--out", help="output folder (default: runs/SCRIPT-DATA-SIZE, or the checkpoint's)")
    p.add_argument("--log-every", type=int, default=100, help="status line and metrics row (default: 100)")
    p.add_argument("--sample-every", type=int, default=1000, help="sample grid (default: 1000)")
    p.add_argument("--ckpt-every", type=int, default=1000, help="checkpoint (default: 1000)")
    p.add_argument("--resume", metavar="CKPT", help=f"continue a checkpoint.pt up to --iters; {data.RESUME_RULE}")
    p.add_argument("--generate", type=int, default=0, metavar="N", help="with --resume: write N PNGs and exit")
    p.add_argument("--render", type=int, default=0, metavar="SIZE", help="with --resume: draw at SIZE and exit")
    args = p.parse_args(argv)
    ckpt = data.load_checkpoint(args.resume) if args.resume else None
    if ckpt:  # the checkpoint's settings, except those given on this command line and where this run runs
        p.set_defaults(**{k: v for k, v in ckpt["args"].items() if k not in data.NOT_INHERITED})
        args = p.parse_args(argv)
    data.finish_args(args, ckpt, os.path.basename(__file__)[:-3], split_size)  # --size, --out; every check
    return args, ckpt


def main(argv=None):
    args, ckpt = get_args(argv)
    device = data.pick_device(args.device, args.cuda_graph)
    torch.manual_seed(args.seed)
    torch.backends.cudnn.benchmark = True
    torch.backends.cuda.matmul.allow_tf32 = torch.backends.cudnn.allow_tf32 = True
    want = ckpt["channels"] if ckpt else None  # a resumed run's data must have the checkpoint's channels
    x = (
        None
        if args.generate or args.render
        else data.load_dataset(args.dataset, args.data_root, args.size, device, want)
    )
    channels = ckpt["channels"] if ckpt else x.shape[1]
    G = Generator(args.z_dim, channels, args.size, args.cppn_width, args.cppn_depth, args.coord_scale).to(device)
    D = Critic(channels, args.size, args.width).to(device)
    graph = bool(args.cuda_graph)  # capturable optimizers (state on the GPU, as a graph needs) only for a graph
    lr_G = args.lr * args.cppn_lr_mul  # the CPPN's step size (see the header)
    opt_G = torch.optim.Adam(G.parameters(), lr=lr_G, betas=(args.beta1, args.beta2), capturable=graph)
    opt_D = torch.optim.Adam(D.parameters(), lr=args.lr, betas=(args.beta1, args.beta2), capturable=graph)
    fixed_z = torch.randn(64, args.z_dim, device=device)  # one z for every sample grid
    G_ema = data.EMA(G, args.ema)  # samples come from this average of G's weights; --ema 0: from G itself
    start, seconds = 0, 0.0
    if ckpt:  # the checkpoint's weights, optimizer, average and random state; this run's flags (lr, betas, ...)
        start, seconds, fixed_z = data.restore(ckpt, args, device, G, D, opt_G, opt_D, G_ema)
    print(data.describe(args, ckpt, x, device), flush=True)  # data, device, iterations, resumed from, --out
    if args.render:  # --resume CKPT --render SIZE
        render(G_ema.model, fixed_z, args.render, args.out)
        return
    if args.generate:  # --resume CKPT --generate N: N single PNGs, the folder format FID tools read
        os.makedirs(os.path.join(args.out, "generated"), exist_ok=True)
        with torch.no_grad():
            for i in range(0, args.generate, 256):
                x_fake = G_ema.model(torch.randn(min(256, args.generate - i), args.z_dim, device=device))
                for j, img in enumerate(x_fake):
                    data.save_grid(img, os.path.join(args.out, "generated", f"{i + j:06d}.png"))
        print(f"wrote {args.generate} samples to {os.path.join(args.out, 'generated')}")
        return

    def save(done):  # atomic; holds everything a resume needs to continue exactly
        state = {"G": G.state_dict(), "D": D.state_dict(), "opt_G": opt_G.state_dict(), "opt_D": opt_D.state_dict()}
        state |= {"G_ema": G_ema.model.state_dict(), "rng": data.rng_state(device), "fixed_z": fixed_z.cpu()}
        state |= {"iter": done, "seconds": seconds + time.time() - t0, "args": vars(args), "channels": channels}
        data.save_checkpoint(state, os.path.join(args.out, "checkpoint.pt"))

    def sample(name, z, nrow=8):
        with torch.no_grad():
            data.save_grid(G_ema.model(z), os.path.join(args.out, name), nrow)

    os.makedirs(args.out, exist_ok=True)
    real_spread = data.save_real_grid(x, os.path.join(args.out, "real_samples.png"))  # the data as trained on
    names = ["loss_D", "loss_G", "w_dist", "gp"]
    log = data.MetricsLog(args.out, names, start, args.resume)
    batches = data.batches(x, args.batch_size)
    step = data.CudaGraphed(train_step, graph)  # train_step, or its CUDA graph replayed
    stats, done, t0, last = torch.zeros(len(names), device=device), start, time.time(), start  # last: the last row
    t_last, i_last = t0, start  # the last status line
    with data.Stop() as stop:  # SIGINT/SIGTERM: finish this iteration, save, exit
        for it in range(start, args.iters):  # Alg. 1 l.1: while theta has not converged
            step(G, D, opt_G, opt_D, batches, stats, args, args.n_critic)
            done = it + 1
            G_ema.update(done)  # plumbing, not Alg. 1: the average of G that samples come from
            early = done - start in (1, 10)  # status lines at once too, without metrics rows: a slow run talks
            if done % args.log_every and done % args.sample_every and done % args.ckpt_every and done < args.iters:
                if not stop.signal and not early:
                    continue  # no host sync between reports
            if not torch.isfinite(stats).all():
                raise SystemExit(
                    f"error: a loss became NaN or inf before iteration {done}; stopped, keeping the last "
                    f"good checkpoint (if any) in {args.out}; try a lower --lr"
                )
            row_due = done % args.log_every == 0 or done == args.iters  # a metrics row too
            if row_due or early:
                row, now = (stats / (done - last)).tolist(), time.time()
                speed = (done - i_last) / (now - t_last)  # the first (cold) iteration timed apart from the rest
                eta = f"{speed:.2f} it/s | ETA {timedelta(seconds=round((args.iters - done) / speed))}"
                eta = eta if done > start + 1 else f"first iteration {now - t_last:.1f} s"
                status = " | ".join(f"{k} {v:.4f}" for k, v in zip(names, row))
                print(f"iter {done}/{args.iters} | {status} | {eta}", flush=True)
                t_last, i_last = now, done
                if row_due:
                    log.append([done, *row, seconds + now - t0])
                    stats, last = stats.zero_(), done
                    with torch.no_grad():  # a warning when the samples are all alike (a collapsed G, or an early one)
                        data.warn_if_alike(G_ema.model(fixed_z), real_spread, done)
            if done % args.sample_every == 0 or done == args.iters:
                sample(f"samples_{done:07d}.png", fixed_z)
            if done % args.ckpt_every == 0 or stop.signal:
                save(done)
            if stop.signal and done < args.iters:  # at the last iteration the run ends as usual
                path = os.path.join(args.out, "checkpoint.pt")
                raise SystemExit(f"interrupted by {stop.signal}: saved iteration {done}; continue with --resume {path}")
        save(done)  # a signal from here on only prints: the run ends as it would have
        g = torch.Generator().manual_seed(args.seed)  # own generator: the training RNG stream is left untouched
        z0, z1 = torch.randn(2, 8, args.z_dim, generator=g).to(device)  # 8 rows, each a pair of endpoints
        z = data.slerp(z0, z1, torch.linspace(0, 1, 10, device=device)).flatten(0, 1)
        sample("interpolation.png", z, nrow=10)
    print(f"done: {done} iterations; outputs in {args.out}")


if __name__ == "__main__":
    main()

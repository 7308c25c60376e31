"""WGAN: Arjovsky, Chintala, Bottou, "Wasserstein GAN", 2017, arXiv:1701.07875, Algorithm 1.

    python wgan.py --dataset stl10 --size 96
    python wgan.py --resume runs/wgan-stl10-96/checkpoint.pt --generate 50000

The critic estimates the Wasserstein-1 distance and is kept K-Lipschitz by clipping every weight into [-c, c]
after each update. DCGAN-style networks for any square size s0*2^k (s0 in 3..7).

Deviations from the paper / official code:
- loss_D = E[D(x~)] - E[D(x)], the paper's sign; the official code minimises E[D(x)] - E[D(x~)] (and the
  generator E[D(G(z))]), so its critic and loss curves are the negatives of ours.
- The official code clips at the start of each critic step, so the generator trains against an unclipped critic;
  here clipping follows each critic update (Alg. 1 l.7). Its 100-step critic schedule is --official-schedule.
- z is 128-d (official: nz 100); G starts with a Linear layer from z, the critic ends with one, and the critic's convs
  and G's output have biases (official: convolutions only, no biases), as in the other scripts.
- Weights start from N(0, 0.02) as in DCGAN; real batches are random indices drawn with replacement, not epochs.
- Samples come from a moving average of G's weights (--ema 0.999; Yazici et al. 2019, arXiv:1806.04498), not G, in
  eval mode; the official codes sample G in train mode (BatchNorm's batch statistics): compare FIDs sampled alike.
"""

import argparse
import os
import time
from datetime import timedelta
from functools import partial

import torch
import torch.nn as nn

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
    """z -> linear to (c, s0, s0) -> k stride-2 transposed convs, each doubling the side -> tanh, in [-1, 1]."""

    def __init__(self, z_dim, channels, size, width):
        super().__init__()
        s0, k = split_size(size)
        c = width * 2 ** (k - 1)
        layers = [nn.Linear(z_dim, c * s0 * s0, bias=False), nn.Unflatten(1, (c, s0, s0))]  # (B, c, s0, s0)
        layers += [nn.BatchNorm2d(c), nn.ReLU(True)]
        for _ in range(k - 1):
            layers += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2  # (B, c, 2s, 2s): half the channels, twice the side
        layers += [nn.ConvTranspose2d(c, channels, 4, 2, 1), nn.Tanh()]  # (B, channels, size, size)
        self.net = nn.Sequential(*layers)
        self.apply(dcgan_init)

    def forward(self, z):  # (B, z_dim)
        return self.net(z)


class Critic(nn.Module):
    """x -> k stride-2 convs + LeakyReLU(0.2), each halving the side -> one unbounded score (a logit in gan.py)."""

    def __init__(self, channels, size, width):
        super().__init__()
        s0, k = split_size(size)
        Norm = nn.BatchNorm2d  # DCGAN's discriminator normalisation
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


@torch.no_grad()
def clip_weights_(critic, c):
    """Alg. 1 l.7: w <- clip(w, -c, c), every critic parameter (BatchNorm's too, as in the official code)."""
    for p in critic.parameters():
        p.clamp_(-c, c)


def train_step(G, D, opt_G, opt_D, batches, stats, args, n_critic):
    """Alg. 1, one generator iteration: n_critic critic steps, then one generator step. Adds the logged statistics
    to `stats` in place, on the device, and never waits for the host. --bf16: the forward passes run under bfloat16
    autocast, without its cache of cast weights; the critic's scores, and so the losses and statistics, stay float32."""
    amp = partial(torch.autocast, stats.device.type, torch.bfloat16, bool(args.bf16), cache_enabled=False)
    for t in range(n_critic):  # l.2
        x_real = next(batches)  # x ~ P_r: a fresh real batch for every critic step
        z = torch.randn(args.batch_size, args.z_dim, device=x_real.device)  # l.3-4: x ~ P_r, z ~ p(z)
        with amp(), torch.no_grad():
            x_fake = G(z)  # x~ <- G(z), detached: this step trains the critic only
        with amp():
            d_real, d_fake = D(x_real).mean(), D(x_fake).mean()
        loss_D = d_fake - d_real  # l.5: g_w = grad_w [mean D(x) - mean D(x~)], ascended: descend its negative
        opt_D.zero_grad(set_to_none=True)
        loss_D.backward()
        opt_D.step()  # l.6: w <- w + alpha RMSProp(w, g_w)
        clip_weights_(D, args.clip)  # l.7: w <- clip(w, -c, c)
    z = torch.randn(args.batch_size, args.z_dim, device=x_real.device)  # l.9: z ~ p(z)
    D.requires_grad_(False)  # the generator step needs no critic weight gradients
    with amp():
        loss_G = -D(G(z)).mean()  # l.10-11: theta <- theta - alpha RMSProp(theta, -grad_theta mean D(G(z)))
    opt_G.zero_grad(set_to_none=True)
    loss_G.backward()
    opt_G.step()
    D.requires_grad_(True)
    stats += torch.stack([loss_D, loss_G, d_real - d_fake]).detach()  # w_dist = E[D(x)] - E[D(x~)]


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
    p.add_argument("--lr", type=float, default=5e-5, help="RMSProp step size (Alg. 1's alpha): 5e-5")
    p.add_argument("--clip", type=float, default=0.01, help="clipping bound c; Alg. 1: 0.01")
    p.add_argument("--official-schedule", action=argparse.BooleanOptionalAction, help="n_critic 100 early; default off")
    p.add_argument("--z-dim", type=int, default=128, help="latent size (default: 128)")
    p.add_argument("--width", type=int, default=64, help="base channel width (default: 64, DCGAN's)")
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
    x = None if args.generate else data.load_dataset(args.dataset, args.data_root, args.size, device, want)
    channels = ckpt["channels"] if ckpt else x.shape[1]
    G = Generator(args.z_dim, channels, args.size, args.width).to(device)
    D = Critic(channels, args.size, args.width).to(device)
    graph = bool(args.cuda_graph)  # capturable optimizers (state on the GPU, as a graph needs) only for a graph
    opt_G = torch.optim.RMSprop(G.parameters(), lr=args.lr, capturable=graph)  # torch's, as the official code
    opt_D = torch.optim.RMSprop(D.parameters(), lr=args.lr, capturable=graph)
    fixed_z = torch.randn(64, args.z_dim, device=device)  # one z for every sample grid
    G_ema = data.EMA(G, args.ema)  # samples come from this average of G's weights; --ema 0: from G itself
    start, seconds = 0, 0.0
    if ckpt:  # the checkpoint's weights, optimizer, average and random state; this run's flags (lr, betas, ...)
        start, seconds, fixed_z = data.restore(ckpt, args, device, G, D, opt_G, opt_D, G_ema)
    print(data.describe(args, ckpt, x, device), flush=True)  # data, device, iterations, resumed from, --out
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
    names = ["loss_D", "loss_G", "w_dist"]
    log = data.MetricsLog(args.out, names, start, args.resume)
    batches = data.batches(x, args.batch_size)
    step = data.CudaGraphed(train_step, graph)  # train_step, or its CUDA graph replayed
    stats, done, t0, last = torch.zeros(len(names), device=device), start, time.time(), start  # last: the last row
    t_last, i_last = t0, start  # the last status line
    with data.Stop() as stop:  # SIGINT/SIGTERM: finish this iteration, save, exit
        for it in range(start, args.iters):  # Alg. 1 l.1: while theta has not converged
            n_critic = 100 if args.official_schedule and (it < 25 or it % 500 == 0) else args.n_critic
            step(G, D, opt_G, opt_D, batches, stats, args, n_critic)
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

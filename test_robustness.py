"""What real users do: odd image modes, out-of-range flags, resuming on another machine, killed jobs."""

import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image

import data
from test_smoke import SCRIPTS, TINY, make_folder, run
from tools import export


def load(folder, size=8):
    return data.load_dataset("folder", str(folder), size, torch.device("cpu"))


def test_16_bit_and_32_bit_gray_are_scaled_by_the_16_bit_range(tmp_path):
    for i, v in enumerate([0, 257 * 64, 32896, 65535]):  # -> 0, 64, 128, 255
        Image.fromarray(np.full((8, 8), v, np.uint16)).save(tmp_path / f"{i}.png")  # opens as "I;16"
    Image.fromarray(np.full((8, 8), 257 * 200, np.int32)).save(tmp_path / "4.tif")  # opens as "I"
    with Image.open(tmp_path / "1.png") as a, Image.open(tmp_path / "4.tif") as b:
        assert a.mode.startswith("I;16") and b.mode == "I"
    x = load(tmp_path)
    assert x.shape == (5, 1, 8, 8) and x.flatten(1).unique(dim=1).flatten().tolist() == [0, 64, 128, 255, 200]


def test_float_gray_is_scaled_by_its_own_range(tmp_path):
    a = np.full((8, 8), -2.0, np.float32)
    a[:, 4:] = 3.0
    Image.fromarray(a).save(tmp_path / "f.tif")
    x = load(tmp_path)
    assert x.shape == (1, 1, 8, 8) and x[0, 0, 0, 0] == 0 and x[0, 0, 7, 7] == 255


def test_transparency_is_composited_onto_white(tmp_path):
    Image.new("RGBA", (8, 8), (0, 0, 0, 0)).save(tmp_path / "clear.png")  # black under full transparency
    Image.new("RGBA", (8, 8), (255, 0, 0, 128)).save(tmp_path / "half.png")
    p = Image.new("P", (8, 8), 1)
    p.putpalette([0, 0, 0, 0, 0, 0])
    p.save(tmp_path / "pal.png", transparency=1)  # palette transparency
    x = load(tmp_path).view(3, 3, -1)[:, :, 0].tolist()
    assert x[0] == [255, 255, 255] and x[2] == [255, 255, 255]
    assert x[1][0] == 255 and abs(x[1][1] - 127) <= 1 and abs(x[1][2] - 127) <= 1  # 128/255 red over white
    (tmp_path / "la").mkdir()
    Image.new("LA", (8, 8), (0, 0)).save(tmp_path / "la" / "a.png")
    Image.new("LA", (8, 8), (0, 255)).save(tmp_path / "la" / "b.png")
    assert load(tmp_path / "la").flatten(1)[:, 0].tolist() == [255, 0]  # gray and alpha: still 1 channel


BAD_FLAGS = [("--size", 0), ("--batch-size", 0), ("--iters", 0), ("--n-critic", 0), ("--lr", 0), ("--lr", "nan"),
             ("--z-dim", 0), ("--width", -1), ("--log-every", 0), ("--sample-every", 0), ("--ckpt-every", 0),
             ("--generate", -3), ("--seed", -1), ("--ema", 1), ("--ema", -0.1)]  # fmt: skip
OWN_BAD_FLAGS = {"wgan": [("--clip", 0)], "wgan_gp": [("--lam", -1), ("--beta1", 1)], "gan": [("--beta2", 1.5)],
                 "cppn_wgan_gp": [("--lam", -1), ("--beta1", -0.1), ("--cppn-width", 0), ("--cppn-depth", -1),
                                  ("--coord-scale", 0), ("--render", -5), ("--cppn-lr-mul", 0)]}  # fmt: skip


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_numeric_flags_name_the_flag_and_range(script, tmp_path):
    folder = make_folder(tmp_path / "img", n=2)
    for flag, value in BAD_FLAGS + OWN_BAD_FLAGS[script]:
        with pytest.raises(SystemExit) as e:
            run(script, "--dataset", "folder", "--data-root", folder, "--out", tmp_path / "out", flag, value)
        msg = str(e.value)
        assert msg.startswith(f"error: {flag} ") and "allowed: " in msg and "\n" not in msg, (flag, msg)
        assert not (tmp_path / "out").exists()
    with pytest.raises(SystemExit, match="--size 0 is out of range"):  # 0 is a size typed, not the default's
        export.main(["--dataset", "folder", "--data-root", folder, "--size", "0", "--export", str(tmp_path / "x")])


def train(script, folder, out, *extra):
    run(script, "--dataset", "folder", "--data-root", folder, "--size", 12, "--iters", 2, "--out", out, *TINY, *extra)
    return os.path.join(out, "checkpoint.pt")


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_cuda_checkpoint_generates_and_resumes_on_a_cpu(script, tmp_path):
    ckpt_path = train(script, make_folder(tmp_path / "img"), tmp_path / "run", "--device", "cpu")
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["args"]["device"], ckpt["args"]["cuda_graph"] = "cuda", True  # as a run with --device cuda --cuda-graph wrote
    for opt in ("opt_G", "opt_D"):  # its optimizers were capturable: float32 steps (map_location puts them on the CPU)
        assert all(s["step"].dtype == torch.float32 for s in ckpt[opt]["state"].values())
        ckpt[opt]["param_groups"][0]["capturable"] = True
    torch.save(ckpt, ckpt_path)
    run(script, "--resume", ckpt_path, "--generate", 2)  # no --device: this machine's, not the checkpoint's
    assert len(os.listdir(tmp_path / "run" / "generated")) == 2
    if script == "cppn_wgan_gp":
        run(script, "--resume", ckpt_path, "--render", 16)
    run(script, "--resume", ckpt_path, "--iters", 4)  # capturable Adam/RMSprop on a CPU would stop at its first step
    ckpt = torch.load(ckpt_path, weights_only=True)
    assert ckpt["args"]["device"] == "auto" and not ckpt["args"]["cuda_graph"]  # this run's, not the checkpoint's
    assert ckpt["iter"] == 4 and not ckpt["opt_G"]["param_groups"][0]["capturable"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_optimizer_flags_given_on_a_resume_take_effect(script, tmp_path, capsys):
    ckpt_path = train(script, make_folder(tmp_path / "img"), tmp_path / "run")
    before = torch.load(ckpt_path, weights_only=True)
    betas = [] if script == "wgan" else ["--beta1", 0.5]  # RMSprop has none
    run(script, "--resume", ckpt_path, "--iters", 3, "--lr", 1e-7, *betas)
    after = torch.load(ckpt_path, weights_only=True)
    weights = [k for k, v in before["D"].items() if v.is_floating_point() and "running_" not in k]  # not BatchNorm's
    moved = max((after["D"][k] - before["D"][k]).abs().max().item() for k in weights)
    assert 0 < moved < 1e-5, moved  # at the checkpoint's lr the critic's weights move ~1e-4 (wgan 5e-4, cppn 2.5e-4)
    (g,), (d,) = after["opt_G"]["param_groups"], after["opt_D"]["param_groups"]
    assert d["lr"] == 1e-7 and g["lr"] == pytest.approx(1e-7 * (4 if script == "cppn_wgan_gp" else 1))
    if betas:
        assert g["betas"][0] == d["betas"][0] == 0.5
    lr0 = {"gan": 2e-4, "wgan": 5e-5, "cppn_wgan_gp": 2.5e-4}.get(script, 1e-4)
    beta1 = ", --beta1 0.0 -> 0.5" if script in ("wgan_gp", "cppn_wgan_gp") else ""  # gan.py's is 0.5 already
    changed = f"resumed from {ckpt_path} at iteration 2 (changed: --iters 2 -> 3, --lr {lr0} -> 1e-07{beta1})"
    assert f"; on cpu; iterations 2 to 3; {changed}; outputs in {tmp_path / 'run'}\n" in capsys.readouterr().out


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_new_seed_on_a_resume_takes_effect(script, tmp_path):
    """A new --seed starts a new random stream; the checkpoint's own --seed continues its stream exactly."""
    ckpt_path = train(script, make_folder(tmp_path / "img"), tmp_path / "run")
    for seed, out in ((0, "same"), (1, "other")):
        run(script, "--resume", ckpt_path, "--iters", 3, "--seed", seed, "--out", tmp_path / out)
    run(script, "--dataset", "folder", "--data-root", tmp_path / "img", "--size", 12, "--iters", 3, "--out",
        tmp_path / "straight", *TINY)  # fmt: skip
    a, b, c = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("straight", "same", "other"))
    assert all(torch.equal(a["D"][k], b["D"][k]) for k in a["D"])
    assert not all(torch.equal(a["D"][k], c["D"][k]) for k in a["D"]) and c["args"]["seed"] == 1


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_resume_never_overwrites_another_runs_checkpoint(script, tmp_path):
    folder = make_folder(tmp_path / "img")
    a, b = train(script, folder, tmp_path / "a"), train(script, folder, tmp_path / "b")
    before = open(b, "rb").read()
    with pytest.raises(SystemExit, match=f"error: {tmp_path / 'b'} holds a run already; continue it with --resume"):
        run(script, "--resume", a, "--iters", 4, "--out", tmp_path / "b")
    assert open(b, "rb").read() == before
    run(script, "--resume", a, "--iters", 4, "--out", tmp_path / "c")  # a new folder: a branch of run a
    assert torch.load(tmp_path / "c" / "checkpoint.pt", weights_only=True)["iter"] == 4
    rows = (tmp_path / "c" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "4"]  # a's history up to its checkpoint, then c's own
    run(
        script, "--resume", tmp_path / "c" / "checkpoint.pt", "--generate", 1, "--out", tmp_path / "b"
    )  # trains nothing


def test_metrics_are_cut_back_to_the_checkpoint_at_once_and_written_atomically(tmp_path, monkeypatch):
    (tmp_path / "metrics.csv").write_text("iter,a,seconds\n2,1,1\n4,2,2\n6,3,3\n")  # rows past a checkpoint at 4
    log = data.MetricsLog(str(tmp_path), ["a"], 4, str(tmp_path / "checkpoint.pt"))
    assert (tmp_path / "metrics.csv").read_text() == "iter,a,seconds\n2,1,1\n4,2,2\n"  # before any new row
    assert (tmp_path / "metrics.png").exists()

    def broken_writer(f, **kw):  # a write that dies half-way (disk full, a kill)
        f.write("iter,a")
        raise OSError("disk full")

    monkeypatch.setattr(data.csv, "writer", broken_writer)
    with pytest.raises(OSError):
        log.append([6, 5.0, 3.0])
    assert (tmp_path / "metrics.csv").read_text() == "iter,a,seconds\n2,1,1\n4,2,2\n"


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_signal_in_the_last_iteration_or_after_it_ends_the_run_normally(script, tmp_path, monkeypatch):
    for owner, name in ((data.EMA, "update"), (data, "save_checkpoint"), (data, "slerp")):
        real = getattr(owner, name)

        def interrupted(
            *a, real=real, owner=owner
        ):  # Ctrl-C lands in the last (2nd) iteration, the final save, the interpolation
            if owner is not data.EMA or a[-1] == 2:
                os.kill(os.getpid(), signal.SIGINT)
            return real(*a)

        monkeypatch.setattr(owner, name, interrupted)
        try:
            train(script, make_folder(tmp_path / "img"), tmp_path / name)  # no "interrupted": nothing left to resume
        except KeyboardInterrupt:  # Python's own SIGINT handler: the signal was not caught
            pytest.fail(f"KeyboardInterrupt during {name}")
        monkeypatch.setattr(owner, name, real)
        assert torch.load(tmp_path / name / "checkpoint.pt", weights_only=True)["iter"] == 2
        assert (tmp_path / name / "interpolation.png").exists()


class FakeCuda(types.SimpleNamespace):
    """torch.cuda on a machine with `n` GPUs, none of them real: records set_device and set_rng_state."""

    def __init__(self, n):
        super().__init__(is_available=lambda: True, device_count=lambda: n, current_device=lambda: 0, calls=[])
        self.set_device = lambda d: self.calls.append(("set_device", d))
        self.set_rng_state = lambda state, d: self.calls.append(("set_rng_state", d)) if d.index < n else 1 / 0


def test_devices_are_checked_and_made_current(monkeypatch):
    monkeypatch.setattr(data.torch, "cuda", FakeCuda(2))
    assert data.pick_device("cuda:1", cuda_graph=True) == torch.device("cuda", 1)
    assert data.pick_device("cuda") == torch.device("cuda", 0)  # streams and graphs go to the current device
    assert data.torch.cuda.calls == [("set_device", torch.device("cuda", 1)), ("set_device", torch.device("cuda", 0))]
    for name, message in [("cuda:9", "--device cuda:9: this machine has 2 CUDA GPU(s), cuda:0 to cuda:1"),
                          ("gpu", "--device gpu is not one of auto, cpu, cuda, cuda:N")]:  # fmt: skip
        with pytest.raises(SystemExit) as e:
            data.pick_device(name)
        assert str(e.value) == f"error: {message}"
    with pytest.raises(SystemExit, match="error: --cuda-graph needs a CUDA device; this run is on cpu"):
        data.pick_device("cpu", cuda_graph=True)


def test_a_checkpoint_from_a_machine_with_more_gpus_restores_on_this_one(monkeypatch):
    fake = FakeCuda(1)
    monkeypatch.setattr(data.torch, "cuda", fake)
    rng = {"cpu": torch.get_rng_state(), "cuda": [torch.zeros(16, dtype=torch.uint8)] * 2}  # trained on 2 GPUs
    G, opt = torch.nn.Linear(1, 1), types.SimpleNamespace(param_groups=[], load_state_dict=lambda state: None)
    ckpt = dict(G=G.state_dict(), D=G.state_dict(), opt_G={"param_groups": []}, opt_D={"param_groups": []}, rng=rng)
    ckpt |= {"args": {"seed": 0}, "iter": 5, "seconds": 1.0, "fixed_z": types.SimpleNamespace(to=lambda d: d)}  # no GPU
    args = types.SimpleNamespace(ema=0, seed=0, resume="checkpoint.pt")
    assert data.restore(ckpt, args, torch.device("cuda", 0), G, G, opt, opt, data.EMA(G, 0))[0] == 5
    assert fake.calls == [("set_rng_state", torch.device("cuda", 0))]  # the training device's state, onto this one


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_mismatches_name_the_flag_and_both_values(script, tmp_path):
    ckpt_path = train(script, make_folder(tmp_path / "gray", gray=True), tmp_path / "run")
    before = open(ckpt_path, "rb").read()
    colour = make_folder(tmp_path / "colour")
    cases = [(["--iters", 4, "--data-root", colour], "has 3-channel images, the checkpoint was trained on 1"),
             (["--iters", 4, "--size", 16], "--size 16 does not match the checkpoint's --size 12"),
             (["--iters", 4, "--width", 16], "--width 16 does not match the checkpoint's --width 8"),
             (["--iters", 4, "--z-dim", 4], "--z-dim 4 does not match the checkpoint's --z-dim 8"),
             (["--iters", 1], "run/checkpoint.pt is at iteration 2, not below --iters 1; give a larger --iters"),
             ([], "run/checkpoint.pt has reached its --iters 2; give a larger --iters to train on")]  # fmt: skip
    if script == "cppn_wgan_gp":  # it changes what the trained CPPN computes; a drawing may change it (below)
        cases.append((["--iters", 4, "--coord-scale", 3], "--coord-scale 3.0 does not match the checkpoint's --coord"))
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            run(script, "--resume", ckpt_path, *argv)
        assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value), argv
    assert open(ckpt_path, "rb").read() == before  # nothing rewritten
    run(script, "--resume", ckpt_path, "--generate", 1)  # --iters at the checkpoint's: fine when nothing trains
    if script == "cppn_wgan_gp":
        run(script, "--resume", ckpt_path, "--render", 8, "--coord-scale", 3)


@pytest.mark.parametrize("script,flag", [("gan", "saturating"), ("wgan", "official-schedule")])
def test_boolean_flags_switch_either_way_on_resume(script, flag, tmp_path):
    ckpt_path = train(script, make_folder(tmp_path / "img"), tmp_path / "run", f"--{flag}")
    key = flag.replace("-", "_")
    assert torch.load(ckpt_path, weights_only=True)["args"][key] is True
    run(script, "--resume", ckpt_path, "--iters", 3, f"--no-{flag}")
    assert torch.load(ckpt_path, weights_only=True)["args"][key] is False
    run(script, "--resume", ckpt_path, "--iters", 4)  # inherited: stays off
    assert torch.load(ckpt_path, weights_only=True)["args"][key] is False
    run(script, "--resume", ckpt_path, "--iters", 5, f"--{flag}")
    assert torch.load(ckpt_path, weights_only=True)["args"][key] is True


@pytest.mark.parametrize("script,sig", [(s, signal.SIGTERM) for s in SCRIPTS] + [("wgan_gp", signal.SIGINT)])
def test_a_stop_by_signal_saves_an_iteration_boundary(script, sig, tmp_path):
    folder = make_folder(tmp_path / "img")
    common = ["--dataset", "folder", "--data-root", folder, "--size", 12, "--device", "cpu", *TINY]
    cmd = [sys.executable, f"{script}.py", *map(str, common), "--iters", "1000000", "--out", str(tmp_path / "stopped")]
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "stopped" / "metrics.png").exists() and p.poll() is None:
        time.sleep(0.05)
    p.send_signal(sig)
    _, err = p.communicate(timeout=120)
    assert p.returncode == 1 and f"interrupted by {sig.name}" in err and "Traceback" not in err, err
    k = torch.load(tmp_path / "stopped" / "checkpoint.pt", weights_only=True)["iter"]
    assert k >= 2
    run(script, "--resume", tmp_path / "stopped" / "checkpoint.pt", "--iters", k + 2)
    run(script, *common, "--iters", k + 2, "--out", tmp_path / "straight")
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("straight", "stopped"))
    for net in ("G", "D"):
        for key in a[net]:
            assert torch.equal(a[net][key], b[net][key]), f"{net}.{key} differs from the uninterrupted run"

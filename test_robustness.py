"""What real users do: odd image modes, out-of-range flags, resuming on another machine, killed jobs."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import data
from test_smoke import SCRIPTS, TINY, make_folder, run


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


BAD_FLAGS = [("--batch-size", 0), ("--iters", 0), ("--n-critic", 0), ("--lr", 0), ("--lr", "nan"),
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


def train(script, folder, out, *extra):
    run(script, "--dataset", "folder", "--data-root", folder, "--size", 12, "--iters", 2, "--out", out, *TINY, *extra)
    return os.path.join(out, "checkpoint.pt")


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_cuda_checkpoint_generates_and_resumes_on_a_cpu(script, tmp_path):
    ckpt_path = train(script, make_folder(tmp_path / "img"), tmp_path / "run", "--device", "cpu")
    ckpt = torch.load(ckpt_path, weights_only=True)
    ckpt["args"]["device"], ckpt["args"]["cuda_graph"] = "cuda", True  # as a run with --device cuda --cuda-graph wrote
    torch.save(ckpt, ckpt_path)
    run(script, "--resume", ckpt_path, "--generate", 2)  # no --device: this machine's, not the checkpoint's
    assert len(os.listdir(tmp_path / "run" / "generated")) == 2
    if script == "cppn_wgan_gp":
        run(script, "--resume", ckpt_path, "--render", 16)
    run(script, "--resume", ckpt_path, "--iters", 4)
    args = torch.load(ckpt_path, weights_only=True)["args"]
    assert args["device"] == "auto" and not args["cuda_graph"]  # this run's, not the checkpoint's


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_mismatches_name_the_flag_and_both_values(script, tmp_path):
    ckpt_path = train(script, make_folder(tmp_path / "gray", gray=True), tmp_path / "run")
    before = open(ckpt_path, "rb").read()
    colour = make_folder(tmp_path / "colour")
    cases = [(["--iters", 4, "--data-root", colour], "has 3-channel images, the checkpoint was trained on 1 channels"),
             (["--iters", 4, "--size", 16], "--size 16 does not match the checkpoint's --size 12"),
             (["--iters", 4, "--width", 16], "--width 16 does not match the checkpoint's --width 8"),
             (["--iters", 4, "--z-dim", 4], "--z-dim 4 does not match the checkpoint's --z-dim 8"),
             (["--iters", 1], "--iters 1 is not above the checkpoint's iteration 2"),
             ([], "--iters 2 is not above the checkpoint's iteration 2: nothing to train")]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(SystemExit) as e:
            run(script, "--resume", ckpt_path, *argv)
        assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value), argv
    assert open(ckpt_path, "rb").read() == before  # nothing rewritten
    run(script, "--resume", ckpt_path, "--generate", 1)  # --iters at the checkpoint's: fine when nothing trains


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

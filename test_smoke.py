"""End-to-end, resume, generate, Ctrl-C and bad-input tests, run for every script on image folders the test writes."""

import importlib
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

SCRIPTS = ["gan", "wgan", "wgan_gp", "cppn_wgan_gp"]
COLUMNS = {"gan": "loss_D,loss_G,D_x,D_G_z", "wgan": "loss_D,loss_G,w_dist"}  # the others: ...,w_dist,gp
TINY = ["--width", "8", "--z-dim", "8", "--batch-size", "8", "--n-critic", "2", "--log-every", "2"]


def make_folder(root, n=12, gray=False, seed=0):
    """n non-square images (so the centre crop matters) in nested folders, as a user's folder would hold."""
    rng = np.random.default_rng(seed)
    for i in range(n):
        shape = (40, 52) if gray else (40, 52, 3)
        path = os.path.join(root, f"sub{i % 2}", f"img{i}.png" if i % 3 else f"img{i}.jpg")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8)).save(path)
    return str(root)


def run(script, *argv):
    importlib.import_module(script).main([str(a) for a in argv])


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
    base = tmp_path_factory.mktemp("data")
    return {"gray": make_folder(base / "gray", gray=True), "colour": make_folder(base / "colour", seed=1)}


@pytest.mark.parametrize("script", SCRIPTS)
@pytest.mark.parametrize("kind,size", [("gray", 28), ("colour", 32)])
def test_end_to_end(script, kind, size, folders, tmp_path):
    out = tmp_path / "run"
    run(script, "--dataset", "folder", "--data-root", folders[kind], "--size", size, "--iters", 4,
        "--sample-every", 2, "--ckpt-every", 2, "--out", out, *TINY)  # fmt: skip
    ckpt = torch.load(out / "checkpoint.pt", weights_only=True)
    assert ckpt["iter"] == 4 and ckpt["channels"] == (1 if kind == "gray" else 3) and ckpt["args"]["size"] == size
    assert {"G", "D", "opt_G", "opt_D", "rng", "fixed_z"} <= set(ckpt)
    rows = (out / "metrics.csv").read_text().splitlines()
    assert rows[0] == f"iter,{COLUMNS.get(script, 'loss_D,loss_G,w_dist,gp')},seconds" and [
        r.split(",")[0] for r in rows[1:]
    ] == ["2", "4"]
    for name in ["samples_0000002.png", "samples_0000004.png"]:  # 8x8 grid, padding 2
        assert Image.open(out / name).size == (8 * (size + 2) + 2,) * 2
    assert Image.open(out / "interpolation.png").size == (10 * (size + 2) + 2, 8 * (size + 2) + 2)
    Image.open(out / "metrics.png").verify()


@pytest.mark.parametrize("script", SCRIPTS)
def test_resume_equals_uninterrupted(script, folders, tmp_path):
    common = ["--dataset", "folder", "--data-root", folders["colour"], "--size", 12, "--device", "cpu", *TINY]
    run(script, *common, "--iters", 6, "--out", tmp_path / "straight")
    run(script, *common, "--iters", 3, "--out", tmp_path / "split")
    run(script, "--resume", tmp_path / "split" / "checkpoint.pt", "--iters", 6)
    a, b = (torch.load(tmp_path / d / "checkpoint.pt", weights_only=True) for d in ("straight", "split"))
    assert b["iter"] == 6
    for net in ("G", "D", "G_ema"):
        for k in a[net]:
            assert torch.equal(a[net][k], b[net][k]), f"{net}.{k} differs after resume"
    rows = (tmp_path / "split" / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["2", "3", "4", "6"]  # 3 is the first run's last log


@pytest.mark.parametrize("script", SCRIPTS)
def test_generate(script, tmp_path):
    run(script, "--dataset", "digits", "--size", 20, "--iters", 2, "--out", tmp_path, *TINY)
    run(script, "--resume", tmp_path / "checkpoint.pt", "--generate", 300)
    files = sorted((tmp_path / "generated").iterdir())
    assert len(files) == 300 and files[0].name == "000000.png"
    for f in files[:3] + files[-3:]:
        with Image.open(f) as im:
            assert im.size == (20, 20) and im.getextrema() != ((0, 0),) * 3


@pytest.mark.parametrize("script", SCRIPTS)
def test_samples_come_from_the_weight_average_and_with_ema_0_from_G(script, tmp_path):
    path = tmp_path / "checkpoint.pt"
    run(script, "--dataset", "digits", "--size", 12, "--iters", 2, "--out", tmp_path, *TINY)
    run(script, "--resume", path, "--iters", 3, "--ema", 0)
    ckpt = torch.load(path, weights_only=True)
    for k in ckpt["G"]:  # decay 0: the average is G after every update
        assert torch.equal(ckpt["G_ema"][k], ckpt["G"][k]), k
    *_, weight, bias = ckpt["G"]  # the output layer: 0 * h + b, so every pixel is tanh(b)
    for net, b in (("G_ema", 0.5), ("G", -0.5)):
        ckpt[net][weight].zero_()
        ckpt[net][bias].fill_(b)
    ckpt["args"]["ema"] = 0.999
    torch.save(ckpt, path)
    for flags, level in (([], 186), (["--ema", 0], 69)):  # round(255 (1 + tanh(b)) / 2): the average's, G's
        out = tmp_path / f"level{level}"
        run(script, "--resume", path, "--generate", 3, "--out", out, *flags)
        for i in range(3):
            with Image.open(out / "generated" / f"00000{i}.png") as im:
                assert im.convert("L").getextrema() == (level, level), (flags, im.getextrema())
        if script == "cppn_wgan_gp":  # --render too; a grid's padding is black
            run(script, "--resume", path, "--render", 20, "--out", out, *flags)
            with Image.open(out / "render_20.png") as im:
                assert im.convert("L").getextrema() == (0, level), (flags, im.getextrema())


def test_ema_is_the_exponential_moving_average():
    model = torch.nn.BatchNorm1d(2)  # float weights and buffers, and the integer num_batches_tracked
    ema, start = data.EMA(model, 0.9), {k: v.clone() for k, v in model.state_dict().items()}
    values, steps = [1.0, -2.0, 4.0], [1, 2, 100]
    for v, n in zip(values, steps):
        with torch.no_grad():
            model.weight.fill_(v)
        model.num_batches_tracked += 1
        ema.update(n)
    d1, d2, d3 = 2 / 11, 3 / 12, 0.9  # min(0.9, (1 + n) / (10 + n)): the warm-up's, then the decay
    want = d1 * d2 * d3 * start["weight"] + (1 - d1) * d2 * d3 * values[0] + (1 - d2) * d3 * values[1]
    want += (1 - d3) * values[2]
    assert torch.allclose(ema.model.weight, want, atol=1e-6) and ema.model.num_batches_tracked == 3
    assert torch.equal(ema.model.running_mean, start["running_mean"])  # unchanged buffers stay put
    assert not ema.model.training and not any(p.requires_grad for p in ema.model.parameters())
    assert model.weight.requires_grad and model.training  # the trained model is left as it was


@pytest.mark.parametrize("script", SCRIPTS)
def test_ctrl_c_saves_a_checkpoint(script, tmp_path):
    cmd = [sys.executable, f"{script}.py", "--dataset", "digits", "--size", "12", "--iters", "1000000", "--out",
           str(tmp_path), *TINY]  # fmt: skip
    p = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    while not (tmp_path / "metrics.png").exists() and p.poll() is None:
        time.sleep(0.1)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=60)
    assert p.returncode != 0 and "interrupted" in err and "Traceback" not in err
    assert torch.load(tmp_path / "checkpoint.pt", weights_only=True)["iter"] >= 2


def bad_inputs(tmp):
    (tmp / "empty").mkdir()
    (tmp / "junk").mkdir()
    (tmp / "junk" / "a.png").write_bytes(b"not a png")
    (tmp / "junk" / "notes.txt").write_text("no images here")
    (tmp / "bad.pt").write_bytes(b"garbage")
    fld = make_folder(tmp / "ok", n=2)
    return [
        (["--dataset", "imagenet"], "unknown --dataset imagenet; choose digits,"),
        (["--dataset", "folder"], "--dataset folder needs --data-root DIR"),
        (["--dataset", "digits", "--data-root", fld], "--dataset digits is drawn in memory and reads no --data-root"),
        (["--dataset", "folder", "--data-root", tmp / "missing"], "is not a folder"),
        (["--dataset", "folder", "--data-root", tmp / "empty"], "no readable images"),
        (["--dataset", "folder", "--data-root", tmp / "junk"], "no readable images"),
        (["--dataset", "folder", "--data-root", fld, "--size", 100], "valid: 6, 8, 10, 12, 14, 16, 20, 24, 28"),
        (["--dataset", "folder", "--data-root", fld, "--size", 4], "is not s0*2^k"),
        (["--resume", tmp / "nope.pt"], "does not exist"),
        (["--resume", tmp / "bad.pt"], "corrupt"),
        (["--generate", 5], "--resume CKPT"),
    ] + ([] if torch.cuda.is_available() else [(["--device", "cuda"], "sees no CUDA")])


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_input_is_one_line_and_nonzero(script, tmp_path):
    for argv, message in bad_inputs(tmp_path):
        with pytest.raises(SystemExit) as e:
            run(script, *argv, "--out", tmp_path / "out")
        assert str(e.value).startswith("error: ") and message in str(e.value) and "\n" not in str(e.value), argv
        assert not (tmp_path / "out").exists(), f"{argv} wrote output"


@pytest.mark.parametrize("script", SCRIPTS)
def test_bad_input_from_the_shell_has_no_traceback(script, tmp_path):
    r = subprocess.run([sys.executable, f"{script}.py", "--dataset", "folder", "--data-root", str(tmp_path / "none")],
                       capture_output=True, text=True)  # fmt: skip
    assert r.returncode == 1 and r.stderr.strip().count("\n") == 0 and r.stderr.startswith("error: ")


@pytest.mark.parametrize("script", SCRIPTS)
def test_existing_run_is_not_overwritten(script, tmp_path):
    argv = ["--dataset", "digits", "--size", 12, "--iters", 2, "--out", tmp_path, *TINY]
    run(script, *argv)
    before = (tmp_path / "checkpoint.pt").read_bytes()
    with pytest.raises(SystemExit, match="holds a run already"):
        run(script, *argv)
    with pytest.raises(SystemExit, match="--width 16 does not match"):  # a checkpoint with other network sizes
        run(script, "--resume", tmp_path / "checkpoint.pt", "--width", 16, "--iters", 4)
    assert (tmp_path / "checkpoint.pt").read_bytes() == before


@pytest.mark.parametrize("script", SCRIPTS)
def test_nan_loss_stops_and_keeps_last_good_checkpoint(script, tmp_path, monkeypatch):
    module = importlib.import_module(script)
    real_randn, calls = torch.randn, []

    def poisoned_randn(*a, **kw):  # the latent z turns to NaN after the 3rd generator iteration
        calls.append(1)
        z = real_randn(*a, **kw)
        return z * float("nan") if len(calls) > 1 + 3 * 3 else z  # 1 fixed_z, then 3 draws per iteration

    monkeypatch.setattr(module.torch, "randn", poisoned_randn)
    with pytest.raises(SystemExit, match="NaN"):
        run(script, "--dataset", "digits", "--size", 12, "--iters", 10, "--ckpt-every", 2, "--out", tmp_path, *TINY)
    ckpt = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    assert ckpt["iter"] == 2 and all(torch.isfinite(v).all() for v in ckpt["G"].values())


class FakeTorchvision:
    """Stands in for a torchvision dataset class, with its real on-disk layout of .data and no network."""

    layouts = {"mnist": (torch.uint8, (50, 28, 28)), "cifar10": (np.uint8, (50, 32, 32, 3)),
               "stl10": (np.uint8, (50, 3, 96, 96))}  # fmt: skip

    def __init__(self, name):
        self.name, self.calls = name, []

    def __call__(self, root, download, **kw):
        self.calls.append(kw)
        dtype, shape = self.layouts[self.name]
        d = np.random.default_rng(0).integers(0, 256, shape, dtype=np.uint8)
        return type("DS", (), {"data": torch.from_numpy(d) if dtype is torch.uint8 else d})()


@pytest.mark.parametrize("name,cls", [("mnist", "MNIST"), ("cifar10", "CIFAR10"), ("stl10", "STL10")])
def test_torchvision_datasets_without_network(name, cls, monkeypatch):
    fake = FakeTorchvision(name)
    monkeypatch.setattr(data.datasets, cls, fake)
    size, channels = data.NATIVE_SIZE[name], 1 if name == "mnist" else 3
    x = data.load_dataset(name, "root", size, torch.device("cpu"))
    assert x.dtype == torch.uint8 and x.shape == (50, channels, size, size)
    if name == "stl10":
        assert fake.calls == [{"split": "unlabeled"}]
    small = data.load_dataset(name, "root", 16, torch.device("cpu"))  # resized on load
    assert small.shape == (50, channels, 16, 16) and abs(small.float().mean() - x.float().mean()) < 3


def test_dataset_too_large_for_the_gpu_is_refused(tmp_path, monkeypatch):
    monkeypatch.setattr(data.torch.cuda, "mem_get_info", lambda device: (1000, 80 * 2**30))
    with pytest.raises(SystemExit, match=r"needs 0.0 GiB but cuda has 0.0 GiB free; use a smaller --size"):
        data.load_dataset("folder", make_folder(tmp_path, n=2), 32, torch.device("cuda"))


def test_folder_loading(tmp_path, capsys):
    make_folder(tmp_path / "gray", n=3, gray=True)
    x = data.load_dataset("folder", str(tmp_path / "gray"), 16, torch.device("cpu"))
    assert x.shape == (3, 1, 16, 16) and x.dtype == torch.uint8
    make_folder(tmp_path / "mixed", n=3, gray=True)
    Image.new("RGB", (30, 20), (255, 0, 0)).save(tmp_path / "mixed" / "red.png")  # one colour image: all RGB
    (tmp_path / "mixed" / "broken.jpg").write_bytes(b"\xff\xd8 truncated")
    x = data.load_dataset("folder", str(tmp_path / "mixed"), 16, torch.device("cpu"))
    assert x.shape == (4, 3, 16, 16) and "skipped 1 unreadable" in capsys.readouterr().out
    red = x[[i for i in range(4) if x[i, 0].float().mean() > 250 and x[i, 1].float().mean() < 5]]
    assert len(red) == 1  # the colour image kept its colour


def test_batches_are_random_scaled_and_on_device():
    x = torch.arange(256, dtype=torch.uint8).view(256, 1, 1, 1)
    b = next(data.batches(x, 4096))
    assert b.shape == (4096, 1, 1, 1) and b.min() == -1 and b.max() == 1 and len(b.unique()) > 200


def test_slerp_endpoints_and_norm():
    z0, z1 = torch.randn(5, 128), torch.randn(5, 128)
    z = data.slerp(z0, z1, torch.linspace(0, 1, 7))
    assert z.shape == (5, 7, 128) and torch.allclose(z[:, 0], z0, atol=1e-5) and torch.allclose(z[:, -1], z1, atol=1e-5)
    assert (z.norm(dim=2) > 0.8 * z0.norm(dim=1, keepdim=True)).all()  # no shrinking towards 0, unlike lerp


@pytest.mark.parametrize("script", SCRIPTS)
def test_real_samples_grid_shows_the_data_as_trained_on(script, folders, tmp_path):
    run(script, "--dataset", "folder", "--data-root", folders["gray"], "--size", 12, "--iters", 1, "--out", tmp_path,
        *TINY)  # fmt: skip
    x = data.load_dataset("folder", folders["gray"], 12, torch.device("cpu"))
    with Image.open(tmp_path / "real_samples.png") as im:
        grid = torch.from_numpy(np.array(im.convert("L")))
    assert grid.shape == (2 * 14 + 2, 8 * 14 + 2)  # 12 images, 8 a row, padding 2
    first = data.random_picks(x, 1)[0]
    assert torch.equal(grid[2:14, 2:14], x[first, 0])  # pixel for pixel the uint8 training image


def test_metrics_png_draws_a_single_row_and_an_iteration_axis(tmp_path):
    log = data.MetricsLog(str(tmp_path), ["a", "b"], 0)
    log.append([100, 1.0, 2.0, 0.5])
    img = torch.from_numpy(np.array(Image.open(tmp_path / "metrics.png").convert("RGB")))
    navy = (img == torch.tensor([0, 0, 128], dtype=torch.uint8)).all(2)
    assert navy[:170].any() and navy[170:].any()  # the one row is drawn as a point in each panel
    for i in range(2, 40):
        log.append([100 * i, 1.0 / i, float(i), float(i)])
    img = torch.from_numpy(np.array(Image.open(tmp_path / "metrics.png").convert("L")))
    assert (img[170 - 14 : 170, :] < 200).any()  # iteration labels under the first panel

"""A first run: the offline digits, the start-up and early status lines, the defaults a folder gets, the order of the
checks, folders an FID reads never mixed, and a failed download's message."""

import os
import re

import numpy as np
import pytest
import torch
from PIL import Image, ImageFont

import data
from test_smoke import SCRIPTS, TINY, FakeTorchvision, make_folder, run
from tools import export


def test_digits_are_the_same_every_time_from_pillows_own_font(monkeypatch):
    real = ImageFont.truetype  # Pillow's own font comes from its bytes; a font file would come by name

    def font_file_refused(font, *a, **kw):
        return real(font, *a, **kw) if hasattr(font, "read") else pytest.fail(f"font file {font} asked for")

    monkeypatch.setattr(ImageFont, "truetype", font_file_refused)
    x, y = data.digits.__wrapped__(200)  # drawn afresh, not the cached set
    x0, y0 = data.digits()
    assert x0.shape == (10000, 1, 32, 32) and x0.dtype == torch.uint8 and torch.equal(x, x0[:200])
    assert torch.equal(y, y0[:200]) and torch.bincount(y0).min() > 900  # all ten digits, about equally often
    assert 20 < x0.float().mean() < 60 and (x0 == 0).float().mean() > 0.5  # white strokes on black, like MNIST's


def test_digits_look_like_their_labels():
    """Nearest class mean (of the first 5,000) names the other 5,000 mostly right: the labels are the drawn digits.
    Measured: 0.74 of them; with the labels shuffled 0.10."""
    x, y = data.digits()
    x = x.flatten(1).float()
    means = torch.stack([x[:5000][y[:5000] == d].mean(0) for d in range(10)])
    hits = (torch.cdist(x[5000:], means).argmin(1) == y[5000:]).float().mean()
    assert hits > 0.5, hits


def lines(capsys):
    return capsys.readouterr().out.splitlines()


@pytest.mark.parametrize("script", SCRIPTS)
def test_a_run_says_what_it_trains_at_once_and_talks_early(script, tmp_path, capsys):
    run(script, "--dataset", "digits", "--size", 16, "--iters", 12, "--out", tmp_path, *TINY, "--log-every", 100)
    out = lines(capsys)
    assert out[0] == f"digits: 10000 images, 1 channel(s), 16x16; on cpu; iterations 0 to 12; outputs in {tmp_path}"
    status = [line.split(" | ")[0] for line in out if line.startswith("iter ")]
    assert status == ["iter 1/12", "iter 10/12", "iter 12/12"]  # at 1 and 10, then every --log-every and the end
    assert "first iteration" in out[1] and "ETA" in out[2]  # the cold first iteration gives no ETA
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["12"]  # the early lines write no rows
    run(script, "--resume", tmp_path / "checkpoint.pt", "--iters", 30, "--log-every", 15)  # a resume talks early too
    out = lines(capsys)
    assert out[0].endswith(f"iterations 12 to 30; resumed from {tmp_path / 'checkpoint.pt'} at iteration 12 "
                           f"(changed: --iters 12 -> 30, --log-every 100 -> 15); outputs in {tmp_path}")  # fmt: skip
    status = [line.split(" | ")[0] for line in out if line.startswith("iter ")]
    assert status == ["iter 13/30", "iter 15/30", "iter 22/30", "iter 30/30"]
    rows = (tmp_path / "metrics.csv").read_text().splitlines()
    assert [r.split(",")[0] for r in rows[1:]] == ["12", "15", "30"]


def test_the_digits_need_no_data_root_from_a_checkpoint_on_other_data(tmp_path):
    folder = make_folder(tmp_path / "img", gray=True)
    run("wgan_gp", "--dataset", "folder", "--data-root", folder, "--size", 16, "--iters", 1, "--out", tmp_path / "a",
        *TINY)  # fmt: skip
    run("wgan_gp", "--resume", tmp_path / "a" / "checkpoint.pt", "--dataset", "digits", "--iters", 2)
    assert torch.load(tmp_path / "a" / "checkpoint.pt", weights_only=True)["args"]["data_root"] is None
    with pytest.raises(SystemExit, match="--dataset digits is drawn in memory and reads no --data-root"):
        run("wgan_gp", "--resume", tmp_path / "a" / "checkpoint.pt", "--iters", 3, "--data-root", folder)


def image_folder(root, sizes):
    os.makedirs(root)
    for i, (w, h) in enumerate(sizes):
        Image.fromarray(np.full((h, w), 40 * i, np.uint8)).save(os.path.join(root, f"{i}.png"))
    return str(root)


@pytest.mark.parametrize("script", ["gan", "cppn_wgan_gp"])
def test_a_folder_trains_at_its_images_size_into_a_folder_named_for_it(script, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    run(script, "--dataset", "folder", "--data-root", image_folder(tmp_path / "faces", [(24, 24)] * 3), "--iters", 1,
        *TINY)  # fmt: skip
    assert torch.load(f"runs/{script}-faces-24/checkpoint.pt", weights_only=True)["args"]["size"] == 24
    assert "note" not in capsys.readouterr().out
    for name, sizes in (("mixed", [(24, 24), (32, 32)]), ("oblong", [(40, 52)] * 2), ("odd", [(18, 18)] * 2)):
        run(script, "--dataset", "folder", "--data-root", image_folder(tmp_path / name, sizes), "--iters", 1, *TINY)
        assert os.path.exists(f"runs/{script}-{name}-64/checkpoint.pt"), name  # 18 = 9 * 2: not s0*2^k
        assert f"note: --size 64: the images under {tmp_path / name} are not all of one square side" in lines(capsys)[0]
    run(script, "--dataset", "digits", "--iters", 1, *TINY)
    assert os.path.exists(f"runs/{script}-digits-32/checkpoint.pt")


@pytest.mark.parametrize("script", SCRIPTS)
def test_flag_errors_come_before_an_occupied_out_folder(script, tmp_path):
    run(script, "--dataset", "digits", "--size", 12, "--iters", 1, "--out", tmp_path, *TINY)
    cases = [(["--size", 100], "--size 100 is not s0*2^k"), (["--lr", 0], "--lr 0.0 is out of range"),
             (["--dataset", "folder"], "--dataset folder needs --data-root"),
             (["--device", "cuda:x"], "--device cuda:x")]  # fmt: skip
    for argv, message in cases:
        with pytest.raises(SystemExit, match=re.escape("error: " + message)):
            run(script, "--dataset", "digits", "--size", 12, "--out", tmp_path, *TINY, *argv)
    with pytest.raises(SystemExit, match="holds a run already"):  # and a run with good flags is told so
        run(script, "--dataset", "digits", "--size", 12, "--out", tmp_path, *TINY)


@pytest.mark.parametrize("script", ["wgan", "cppn_wgan_gp"])
def test_generate_and_export_refuse_a_folder_holding_files(script, tmp_path):
    run(script, "--dataset", "digits", "--size", 12, "--iters", 1, "--out", tmp_path / "run", *TINY)
    run(script, "--resume", tmp_path / "run" / "checkpoint.pt", "--generate", 5)
    for _ in range(2):  # fewer samples after more would leave old ones among them
        with pytest.raises(SystemExit, match=f"error: {tmp_path / 'run' / 'generated'} is not empty"):
            run(script, "--resume", tmp_path / "run" / "checkpoint.pt", "--generate", 2)
        assert len(os.listdir(tmp_path / "run" / "generated")) == 5
    export.main(["--dataset", "digits", "--size", "16", "--export", str(tmp_path / "ref"), "--n", "7"])
    with pytest.raises(SystemExit, match="is not empty"):
        export.main(["--dataset", "digits", "--export", str(tmp_path / "ref"), "--n", "3"])
    assert len(os.listdir(tmp_path / "ref")) == 7


def test_export_writes_the_images_as_trained_on(tmp_path):
    folder = make_folder(tmp_path / "img", n=12)
    x = data.load_dataset("folder", folder, 12, torch.device("cpu"))
    export.main(["--dataset", "folder", "--data-root", folder, "--size", "12", "--export", str(tmp_path / "all")])
    export.main(["--dataset", "folder", "--data-root", folder, "--size", "12", "--export", str(tmp_path / "some"),
                 "--n", "5"])  # fmt: skip
    assert sorted(os.listdir(tmp_path / "all")) == [f"{i:06d}.png" for i in range(12)]
    some = sorted(os.listdir(tmp_path / "some"))
    assert len(some) == 5 and set(some) < set(os.listdir(tmp_path / "all"))
    for name in some:
        with Image.open(tmp_path / "some" / name) as im:
            assert im.mode == "RGB" and torch.equal(torch.from_numpy(np.array(im)).permute(2, 0, 1), x[int(name[:6])])
    with pytest.raises(SystemExit, match="--n 0 is out of range"):
        export.main(["--dataset", "folder", "--data-root", folder, "--export", str(tmp_path / "x"), "--n", "0"])


class FailingDownload(FakeTorchvision):
    """Makes the folders torchvision makes, then fails as it does offline, with a long multi-line reason."""

    def __call__(self, root, download, **kw):
        os.makedirs(os.path.join(root, "MNIST", "raw"))
        raise RuntimeError(
            "Error downloading train-images-idx3-ubyte.gz:\n" + "Tried https://mirror/, got: " * 8 + "END"
        )


def test_a_failed_download_says_so_whole_on_one_line_and_leaves_no_empty_folders(tmp_path, monkeypatch):
    monkeypatch.setattr(data.datasets, "MNIST", FailingDownload("mnist"))
    (tmp_path / "data" / "old").mkdir(parents=True)  # a user's folder that was there stays
    with pytest.raises(SystemExit) as e:
        data.load_dataset("mnist", str(tmp_path / "data"), 28, torch.device("cpu"))
    msg = str(e.value)
    assert msg.startswith(f"error: could not download mnist into {tmp_path / 'data'} (RuntimeError: Error downloading")
    assert "got: END)" in msg and "\n" not in msg and "--dataset digits" in msg and "--dataset folder" in msg
    assert sorted(os.listdir(tmp_path / "data")) == ["old"]


def test_samples_all_alike_get_one_warning_line_and_real_images_none(capsys):
    """The collapse guard's yardstick: 64 real digits spread 1.06 times as much as 64 others (measured); one digit
    with faint noise (std 0.05) 0.12 of it. The threshold, 0.25, sits between the alike grids of docs/gallery.md's runs
    (gan.py's collapse 0.14-0.23 at 100-500, the early gray grids 0.09-0.16) and the grids from 300 on (0.27 and up)."""
    x = data.digits()[0].float() / 127.5 - 1
    real = data.spread(x[:64])
    data.warn_if_alike(x[64:128], real, 300)
    assert capsys.readouterr().out == ""
    noise = 0.05 * torch.randn(64, 1, 32, 32, generator=torch.Generator().manual_seed(0))
    data.warn_if_alike(x[:1] + noise, real, 300)
    out = capsys.readouterr().out
    assert out.startswith("warning: iteration 300: the fixed-z samples are nearly all alike (spread 0.12 of the real")
    assert out.count("\n") == 1 and "try a lower --lr" in out


@pytest.mark.parametrize("script", SCRIPTS)
def test_each_report_checks_the_fixed_z_samples_against_the_real_grid(script, tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(data, "warn_if_alike", lambda samples, real, done: seen.append((samples.shape, real, done)))
    cppn = ["--cppn-width", 8] if script == "cppn_wgan_gp" else []
    run(script, "--dataset", "digits", "--iters", 4, "--out", tmp_path, *TINY, *cppn)
    assert [done for _, _, done in seen] == [2, 4]  # at every --log-every (2 in TINY), not at the early lines
    assert all(shape == (64, 1, 32, 32) and 15 < real < 25 for shape, real, _ in seen)  # the digits' spread: 19.5


def test_a_gan_at_its_start_is_warned_about(tmp_path, capsys):
    run("gan", "--dataset", "digits", "--iters", 2, "--out", tmp_path, *TINY)  # G's first samples are all alike
    assert "warning: iteration 2: the fixed-z samples are nearly all alike" in capsys.readouterr().out

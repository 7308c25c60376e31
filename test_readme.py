"""docs/side-by-side.md's diffs must be the files' real diffs (`python test_readme.py` rewrites them); the README's
pictures must be what tools/gallery.py draws."""

import os
import re
import subprocess
import sys

from PIL import Image

sys.path.insert(0, "tools")
import gallery  # noqa: E402

PAIRS = [("gan.py", "wgan.py"), ("wgan.py", "wgan_gp.py"), ("wgan_gp.py", "cppn_wgan_gp.py")]
DOC = "docs/side-by-side.md"


def diff(a, b):
    return subprocess.run(["diff", a, b], capture_output=True, text=True).stdout


def block(a, b):
    d = diff(a, b)
    n = sum(line[:1] in "<>" for line in d.splitlines() if line)
    return f"<!-- diff {a} {b} -->\n`diff {a} {b}`: {n} changed lines, both sides counted.\n\n```diff\n{d}```\n"


def pattern(a, b):
    return re.compile(rf"<!-- diff {re.escape(a)} {re.escape(b)} -->\n.*?```diff\n.*?```\n", re.S)


def test_side_by_side_diffs_match_the_files():
    doc = open(DOC).read()
    for a, b in PAIRS:
        found = pattern(a, b).search(doc)
        assert found, f"{DOC} has no `diff {a} {b}` block"
        assert found.group(0) == block(a, b), f"{DOC}'s diff {a} {b} is stale: run python test_readme.py"


def test_readme_shows_the_gallery_and_its_recipe():
    readme = open("README.md").read()
    assert "python tools/gallery.py" in readme
    assert sorted(set(re.findall(r"docs/img/([\w.]+)", readme))) == sorted(gallery.PICTURES)
    for script, flags in gallery.RUNS.values():
        assert f"{script} {flags}" in readme, f"README does not give the gallery's run: {script} {flags}"


def test_gallery_draws_the_committed_pictures_layout(tmp_path):
    """The gallery on a tiny budget (5 iterations, tiny networks): every picture is written, and the committed ones have
    the layout this code draws (panels, tiles and labels), so they are not left from an older gallery."""
    tiny = "--dataset digits --width 4 --iters 5 --sample-every 1 --log-every 1 --ckpt-every 5"
    plan = {name: (script, tiny) for name, (script, _) in gallery.RUNS.items()}
    plan["cppn_wgan_gp"] = ("cppn_wgan_gp.py", tiny + " --cppn-width 8 --cppn-depth 1")
    steps = {k: list(range(1, len(v) + 1)) for k, v in gallery.STEPS.items()}
    gallery.build(str(tmp_path / "runs"), str(tmp_path / "img"), plan, steps, gallery.RENDER, gallery.GIF)
    for name in gallery.PICTURES:
        with Image.open(tmp_path / "img" / name) as new, Image.open(os.path.join("docs/img", name)) as old:
            assert new.size == old.size and new.mode == old.mode, name
    with Image.open(tmp_path / "img" / "cppn.gif") as gif:
        assert gif.n_frames == 24


if __name__ == "__main__":
    text = open(DOC).read()
    for a, b in PAIRS:
        text = pattern(a, b).sub(lambda m, a=a, b=b: block(a, b), text)
    open(DOC, "w").write(text)

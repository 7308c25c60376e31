"""docs/side-by-side.md's diffs must be the files' real diffs. `python test_readme.py` rewrites them."""

import re
import subprocess

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


if __name__ == "__main__":
    text = open(DOC).read()
    for a, b in PAIRS:
        text = pattern(a, b).sub(lambda m, a=a, b=b: block(a, b), text)
    open(DOC, "w").write(text)

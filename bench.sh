#!/usr/bin/env bash
# Benchmark: training speed of wgan_gp.py at 96x96 (STL-10's size) on a synthetic folder of 2,000 images.
# Usage: bash bench.sh [extra wgan_gp.py flags]; prints the status lines, whose it/s the README quotes.
set -euo pipefail
PY=${PY:-python3}
dir=$(mktemp -d)
"$PY" -c "
import numpy as np, os, sys
from PIL import Image
r = np.random.default_rng(0)
for i in range(2000):
    Image.fromarray(r.integers(0, 256, (96, 96, 3), dtype=np.uint8)).save(os.path.join(sys.argv[1], f'{i}.png'))
" "$dir"
"$PY" wgan_gp.py --dataset folder --data-root "$dir" --size 96 --iters "${ITERS:-600}" --log-every "${LOG_EVERY:-100}" --sample-every 100000 \
  --ckpt-every 100000 --out "$dir/run" "$@"
rm -rf "$dir"

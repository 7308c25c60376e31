#!/usr/bin/env bash
# One prepared GPU check, meant to take under 8 minutes on one H100/H200 (not yet run on a GPU): the CUDA tests,
# then bench.py for every script x size x mode and the headline estimate. Everything it prints goes to OUT/ too:
#
#     bash tools/gpu_check.sh OUT            # on a CUDA machine
#     bash tools/gpu_check.sh OUT --dry-run  # on a CPU: the same steps cut short (about 5 minutes), to catch typos
#
# OUT/env.txt: GPU, driver, torch, CUDA; OUT/test_cuda.txt: pytest's report; OUT/bench.md: the speed table and the
# headline line. The exit status is pytest's (bench runs either way).
set -uo pipefail
out=${1:?usage: tools/gpu_check.sh OUT [--dry-run]}
mkdir -p "$out"
cd "$(dirname "$0")/.."
py=${PYTHON:-python3}  # the device image's python3 holds torch; here: PYTHON=.venv/bin/python
if [ "${2:-}" = "--dry-run" ]; then
    bench=(--device cpu --iters 3 --warm 2 --sizes 8 --images 16 --headline 16)
else
    bench=(--iters 150 --warm 50 --headline 100000)
fi
{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv 2>&1 || echo "no nvidia-smi"
    "$py" -c "import torch; print('torch', torch.__version__, 'CUDA', torch.version.cuda, 'cuDNN', torch.backends.cudnn.version(), 'GPUs', torch.cuda.device_count())"
} | tee "$out/env.txt"
"$py" -m pytest -q -rs test_cuda.py 2>&1 | tee "$out/test_cuda.txt"
status=${PIPESTATUS[0]}
"$py" bench.py "${bench[@]}" 2>&1 | tee "$out/bench.md"
exit "$status"

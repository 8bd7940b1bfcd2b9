#!/usr/bin/env bash
# The checks that need a GPU, in one run of under 5 minutes on one H100 / H200:
#   scripts/gpu_checks.sh OUT_DIR        (PY: .venv/bin/python when it exists, else python3)
# - the CUDA tests (allocator against LiveBytes, vmap against the loop on CUDA, peers);
# - the meta-batch benchmarks on CUDA (20-way 5-shot, 16 tasks, loop against vmap);
# - live tensor bytes against the CUDA allocator, cuDNN on and off;
# - side by side with higher and torchopt, per task and per meta-batch of 16;
# - the CNN cost sweep on CUDA, every method, 1 to 32 inner steps.
# Every stage runs under its own time limit; a failed stage is reported and the next one runs.
# On a copy of the tree without its git history, set SUITE_GIT_COMMIT for the provenance column.
set -uo pipefail
out=${1:?usage: scripts/gpu_checks.sh OUT_DIR}
source "$(dirname "$0")/gpu_stages.sh"
stage 90 $PY -m pytest -q -p no:cacheprovider tests/test_measure.py \
    tests/test_batched.py tests/test_peers.py tests/test_sweeps.py
stage 60 $PY -m pytest -q -p no:cacheprovider --benchmark-only -k "meta_batch and cuda" \
    --benchmark-json "$out/bench_meta_batch_cuda.json" tests/test_benchmarks.py
# Where LiveBytes (tensors) and the CUDA allocator differ: cuDNN's workspaces are no tensors.
stage 60 $PY - <<'PY'
import torch
from suite import meta_gradient
from suite.harness.measure import measure_memory
from suite.core.solvers import GD
from suite.harness.workloads import cnn_tasks
tasks, theta = cnn_tasks(n_way=20, k_shot=5, device="cuda")
for cudnn in (True, False):
    torch.backends.cudnn.enabled = cudnn
    for method, opts in (("maml", {}), ("fomaml", {}), ("truncated", {"truncate": 2}),
                         ("imaml", {"cg_steps": 5})):
        f = measure_memory(lambda: meta_gradient(method, tasks[0], theta, lam=10.0,
                                                 solver=GD(3, 0.1), **opts), "cuda")
        print(f"cudnn {cudnn!s:5} {method:9} live {f.peak_bytes:>11,} allocator "
              f"{f.cuda_peak_bytes:>11,} gap {f.cuda_peak_bytes - f.peak_bytes:>10,} B "
              f"({f.cuda_peak_bytes / f.peak_bytes - 1:+.1%})")
PY
stage 200 $PY -m suite peers --device cuda --steps 5 15 25 --batch-steps 5 \
    --meta-batch 16 --repeats 3 --out "$out/peers_cuda.csv" --report "$out/peers_cuda.md"
stage 80 $PY -m suite sweeps cost --device cuda --steps 1 2 4 8 16 32 --truncate 5 \
    --cg-steps 5 --lam 10 --repeats 5 --quiet --out "$out/cost_cnn_20w5s_cuda.csv"
exit $failed

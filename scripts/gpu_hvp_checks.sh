#!/usr/bin/env bash
# The GPU checks of the cheaper Hessian-vector product and of nccl, in one run of about
# 3 minutes on one H100 / H200:  scripts/gpu_hvp_checks.sh OUT_DIR [OMNIGLOT_ROOT]
# - the CUDA tests of the products, BatchNorms, batching and memory meter;
# - imaml-suite sweeps hvp-cost --device cuda: every product for every BatchNorm, and
#   iMAML against its ideal (which product and which BatchNorm are fastest on CUDA);
# - Omniglot iMAML training on CUDA with the closed-form BatchNorm; torchrun with more ranks
#   than GPUs refused with the suite's message (nccl needs one GPU per rank);
# - the CNN cost sweep on CUDA at cnn_tasks' BatchNorm for CUDA (batchnorm="auto").
# Every stage runs under its own time limit; a failed stage is reported and the next one runs.
set -uo pipefail
out=${1:?usage: scripts/gpu_hvp_checks.sh OUT_DIR [OMNIGLOT_ROOT]}
data=${2:-../shared/data/omniglot}
source "$(dirname "$0")/gpu_stages.sh"
stage 150 $PY -m pytest -q -p no:cacheprovider -x tests/test_hvp_products.py \
    tests/test_batched.py tests/test_measure.py
stage 120 $PY -m suite sweeps hvp-cost --device cuda --repeats 20 --out "$out/hvp_cost_cuda.csv"
run=(-m suite omniglot train --recipe imaml-gn-lam0.5 --batchnorm closed-form --iterations 4
     --meta-batch 4 --inner-steps 4 --eval-tasks 20 --device cuda --root "$data" --quiet)
stage 90 $PY "${run[@]}" --out /tmp/omni_cuda
# NCCL refuses two ranks on one GPU, so one GPU can only check that the suite says so first.
echo "== torchrun, 2 ranks on $(nvidia-smi -L | wc -l) GPU(s): expect the suite's refusal"
timeout 90 torchrun --standalone --nproc_per_node 2 "${run[@]}" --out /tmp/omni_nccl \
    > /tmp/nccl.log 2>&1
rc=$?
if [ $rc -ne 0 ] && grep -q "start at most that many processes per node" /tmp/nccl.log; then
    grep -m1 "start at most" /tmp/nccl.log; echo "== refused as expected (rc=$rc)"
else
    tail -20 /tmp/nccl.log; echo "== NOT refused as expected (rc=$rc)"; failed=1
fi
stage 90 $PY -m suite sweeps cost --device cuda --steps 1 2 4 8 16 32 --truncate 5 \
    --cg-steps 5 --lam 10 --repeats 5 --quiet --out "$out/cost_cnn_20w5s_cuda.csv"
exit $failed

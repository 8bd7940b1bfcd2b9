# Sourced by the GPU check scripts: PY, the OUT_DIR in $out (made), `stage LIMIT CMD...` which
# runs one stage under its own time limit and records a failure in $failed (the next stage
# runs), and the device and torch lines every log starts with.
# The project's virtual environment (make venv) when there is one, else python3.
default_py=python3
[ -x "$(dirname "${BASH_SOURCE[0]}")/../.venv/bin/python" ] && \
    default_py="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)/.venv/bin/python"
PY=${PY:-$default_py}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
failed=0
stage() {
    local limit=$1; shift
    echo "== $* (limit ${limit}s)"
    local t0=$SECONDS
    timeout "$limit" "$@"
    local rc=$?
    echo "== rc=$rc after $((SECONDS - t0))s"
    [ $rc -eq 0 ] || failed=1
}
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
$PY -c "import torch; print('torch', torch.__version__, torch.cuda.get_device_name())" || exit 1

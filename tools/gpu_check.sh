#!/usr/bin/env bash
# The one prepared GPU check: on a fresh, offline CUDA machine with this repository (Python 3.12 with
# torch, torchvision, timm, numpy, nvcc; no OpenMMLab package) and the wheel folder made here by
# `make gpu-wheels`, install the stack, build mmcv from its sdist, run the CUDA tests and the
# Swin-T 1024² / ViT-L 256² / DINO 800×1333 benchmarks on the GPU, all under one time limit.
#
#   bash tools/gpu_check.sh [--dry-run] [--out DIR] [--time-limit SECONDS] [--wheels DIR]
#                           [--mmcv-cuda] [--skip-wheels]
#
#   --dry-run      everything but the CUDA work, on any machine: checks the wheel folder and that
#                  pip would install it for Python 3.12, unpacks mmcv's sdist, runs the CUDA tests
#                  (skipped without a GPU, with the reason) and the benchmarks at tiny sizes on CPU
#   --out DIR      output folder (default gpu_check_out/): one log per step, the benchmarks'
#                  JSON/markdown/PNG, summary.md and summary.json
#   --time-limit   seconds for the whole run (default 450); a step that would pass it is stopped
#                  and the rest are marked skipped; exit code 3 then
#   --wheels DIR   the wheel folder (default .gpu_wheels/)
#   --mmcv-cuda    build mmcv's CUDA ops too (sm_90 only; untested, several minutes on 16 cores);
#                  default: CPU ops, and DINO's deformable attention through mmcv's pure-PyTorch
#                  code (DR2NET_MMCV_PYTORCH_FALLBACK=1)
#   --skip-wheels  dry run without a wheel folder (CI): the wheel steps are marked skipped
# PYTHON picks the interpreter (default python3). Exit code: 0 all steps passed, 1 a step failed,
# 2 bad arguments, 3 out of time.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-python3}"
DRY=0; OUT=gpu_check_out; LIMIT=450; WHEELS=.gpu_wheels; MMCV_CUDA=0; SKIP_WHEELS=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --mmcv-cuda) MMCV_CUDA=1 ;;
        --skip-wheels) SKIP_WHEELS=1 ;;
        --out) OUT="${2:?--out needs a folder}"; shift ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
        --time-limit) LIMIT="${2:?--time-limit needs seconds}"; shift ;;
        *) echo "gpu_check.sh: unknown argument '$1' (see the header of $0)" >&2; exit 2 ;;
    esac
    shift
done
if ! [[ "$LIMIT" =~ ^[0-9]+$ ]] || (( LIMIT < 30 )); then
    echo "gpu_check.sh: --time-limit '$LIMIT': need whole seconds >= 30" >&2; exit 2
fi
if [[ $SKIP_WHEELS == 1 && $DRY == 0 ]]; then
    echo "gpu_check.sh: --skip-wheels only goes with --dry-run (a real run installs from the wheels)" >&2
    exit 2
fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
: >"$OUT/steps.tsv"
START=$SECONDS
WORK="${TMPDIR:-/tmp}/dr2net_gpu_check"
SITE="$WORK/site"
OUT_OF_TIME=0
FAILED=0

log() { echo "[gpu_check $((SECONDS - START))s] $*"; }

# step NAME MAX_SECONDS CMD...: run CMD with its output in $OUT/NAME.log, for at most MAX_SECONDS and
# never past the time limit (SIGINT first, then KILL); record the result in steps.tsv.
step() {
    local name="$1" max="$2" budget rc began=$SECONDS
    shift 2
    budget=$(( LIMIT - (SECONDS - START) - 5 ))
    (( budget > max )) && budget=$max
    if (( OUT_OF_TIME )) || (( budget < 10 )); then
        OUT_OF_TIME=1
        log "$name: skipped (time limit ${LIMIT}s reached)"
        printf '%s\tskipped: time limit\t0\n' "$name" >>"$OUT/steps.tsv"
        return 1
    fi
    log "$name: start (at most ${budget}s) -> $OUT/$name.log"
    timeout --signal=INT --kill-after=10 "$budget" "$@" >"$OUT/$name.log" 2>&1
    rc=$?
    if (( rc == 0 )); then
        log "$name: ok ($((SECONDS - began))s)"
        printf '%s\tok\t%s\n' "$name" $((SECONDS - began)) >>"$OUT/steps.tsv"
        return 0
    fi
    if (( rc == 124 || rc == 137 )); then
        (( budget < max )) && OUT_OF_TIME=1
        log "$name: STOPPED after ${budget}s (rc $rc); last lines:"
    else
        log "$name: FAILED (rc $rc); last lines:"
    fi
    tail -n 15 "$OUT/$name.log" | sed 's/^/    /'
    printf '%s\tfailed: rc %s\t%s\n' "$name" "$rc" $((SECONDS - began)) >>"$OUT/steps.tsv"
    FAILED=1
    return 1
}

skip() {  # NAME REASON
    log "$1: skipped ($2)"
    printf '%s\tskipped: %s\t0\n' "$1" "$2" >>"$OUT/steps.tsv"
}

finish() {
    "$PY" - "$OUT" "$DRY" "$LIMIT" $((SECONDS - START)) <<'EOF'
import json, os, sys
out, dry, limit, elapsed = sys.argv[1], sys.argv[2] == '1', int(sys.argv[3]), int(sys.argv[4])
steps = [dict(zip(('step', 'result', 'seconds'), line.rstrip('\n').split('\t')))
         for line in open(os.path.join(out, 'steps.tsv')) if line.strip()]
env = open(os.path.join(out, 'environment.log')).read() if os.path.exists(
    os.path.join(out, 'environment.log')) else ''
json.dump(dict(dry_run=dry, time_limit_s=limit, elapsed_s=elapsed, environment=env,
               steps=steps), open(os.path.join(out, 'summary.json'), 'w'), indent=1)
lines = [f'# tools/gpu_check.sh{" --dry-run" if dry else ""}: {elapsed} s of {limit} s', '',
         '```', env.strip(), '```', '', '| step | result | seconds |', '|---|---|---:|']
lines += [f'| {s["step"]} | {s["result"]} | {s["seconds"]} |' for s in steps]
for name in sorted(os.listdir(out)):
    if name.startswith('bench_') and name.endswith('.md'):
        lines += ['', f'## {name[:-3]}', '', open(os.path.join(out, name)).read().strip()]
open(os.path.join(out, 'summary.md'), 'w').write('\n'.join(lines) + '\n')
print(f'wrote {out}/summary.md and summary.json')
EOF
    if (( OUT_OF_TIME )); then log "stopped on the time limit (${LIMIT}s)"; exit 3; fi
    if (( FAILED )); then log "done, with failures"; exit 1; fi
    log "done, all steps passed"
    exit 0
}
trap 'log "interrupted"; OUT_OF_TIME=1; finish' INT TERM

# ---- plan ----
if (( DRY )); then MODE="dry run (CPU, tiny sizes)"; else MODE="GPU run"; fi
log "$MODE; output $OUT; time limit ${LIMIT}s; wheels $WHEELS; python $PY"
log "plan: environment, wheels, install, mmcv, cuda-tests, bench_swin_t_1024, bench_vit_l_256, bench_dino_800x1333"

# ---- 1. environment ----
step environment 30 "$PY" -c '
import platform, sys, torch
print("python", sys.version.split()[0], platform.machine())
print("torch", torch.__version__, "CUDA", torch.version.cuda, "available", torch.cuda.is_available())
if torch.cuda.is_available():
    print("device", torch.cuda.get_device_name(0), torch.cuda.get_device_capability(0))
'
cat "$OUT/environment.log"
if (( ! DRY )) && ! grep -q 'available True' "$OUT/environment.log"; then
    log "no CUDA device: this is the GPU run; use --dry-run on a machine without one"
    FAILED=1; finish
fi

# the installed stack (real run) and this repository, ahead of the machine's own packages
export PYTHONPATH="$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"

# ---- 2. wheels: complete for Python 3.12, one file each, small enough to travel ----
PLATFORMS=(--platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64
           --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64)
if (( SKIP_WHEELS )); then
    skip wheels "--skip-wheels"
    skip install "--skip-wheels"
    skip mmcv "--skip-wheels"
else
    step wheels 30 "$PY" tools/gpu_wheels.py check "$WHEELS" || finish
    if (( DRY )); then
        # what pip would install for Python 3.12 from the folder alone (nothing is installed)
        step install 60 "$PY" -m pip install --dry-run --no-index --no-deps --only-binary=:all: \
            --python-version 3.12 --implementation cp "${PLATFORMS[@]}" --target "$WORK/dry_target" \
            "$WHEELS"/*.whl
        step mmcv 30 bash -c "rm -rf '$WORK/mmcv' && mkdir -p '$WORK/mmcv' &&
            tar -xzf '$WHEELS'/mmcv-*.tar.gz -C '$WORK/mmcv' &&
            grep -n \"torch.cuda.is_available() or os.getenv('FORCE_CUDA'\" '$WORK'/mmcv/mmcv-*/setup.py &&
            echo 'would build: MMCV_WITH_OPS=1 MAX_JOBS=\$(nproc) pip wheel --no-deps --no-build-isolation --no-index' \
                 '(CPU ops: CUDA_VISIBLE_DEVICES= FORCE_CUDA=0; --mmcv-cuda: FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0)'"
    else
        step install 90 "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir \
            --upgrade --target "$SITE" "$WHEELS"/*.whl || finish
        if (( MMCV_CUDA )); then
            MMCV_ENV=(FORCE_CUDA=1 TORCH_CUDA_ARCH_LIST=9.0)
        else
            MMCV_ENV=(CUDA_VISIBLE_DEVICES= FORCE_CUDA=0)
        fi
        step mmcv 330 bash -c "rm -rf '$WORK/mmcv' && mkdir -p '$WORK/mmcv' &&
            tar -xzf '$WHEELS'/mmcv-*.tar.gz -C '$WORK/mmcv' &&
            env ${MMCV_ENV[*]} MMCV_WITH_OPS=1 MAX_JOBS=\$(nproc) '$PY' -m pip wheel --no-deps \
                --no-build-isolation --no-index -w '$WORK/mmcv/dist' '$WORK'/mmcv/mmcv-*/ &&
            '$PY' -m pip install --no-index --no-deps --no-compile --target '$SITE' '$WORK'/mmcv/dist/mmcv-*.whl &&
            '$PY' -c 'import torch; from mmcv.ops import nms, get_compiling_cuda_version as v
print(\"mmcv ops\", nms(torch.tensor([[0., 0, 9, 9], [1, 1, 9, 9]]), torch.tensor([.9, .8]), .5)[1].tolist(), \"CUDA:\", v())'" \
            || finish
    fi
fi

# DINO's deformable attention: mmcv's CUDA kernel if it was built, else the logged fallback
if (( ! DRY )) && ! grep -q 'CUDA: [0-9]' "$OUT/mmcv.log" 2>/dev/null; then
    export DR2NET_MMCV_PYTORCH_FALLBACK=1
    log "mmcv has no CUDA ops: DR2NET_MMCV_PYTORCH_FALLBACK=1 (pure-PyTorch deformable attention)"
fi

# ---- 3. the CUDA tests (skipped with their reason where there is no GPU) ----
step cuda-tests 200 "$PY" -m pytest tests/test_cuda.py -q -rs -p no:cacheprovider \
    --junitxml="$OUT/cuda_tests.xml"
tail -n 3 "$OUT/cuda-tests.log" | sed 's/^/    /'

# ---- 4. benchmarks: memory and time of a training step per variant ----
SWIN=(swin --size 1024 --depths 2-2-6-2 --iters 3 --extra)
VIT=(vit --arch vit_large_patch16_224 --size 256 --iters 3)
DINO=(dino --size 800x1333 --batch 1 --iters 3)
if (( DRY )); then
    # the GPU commands' arguments parse; swin and vit run at tiny sizes on CPU (DINO, whose 900
    # queries need >= 900 tokens, takes minutes on CPU: its command is parsed only)
    for cmd in "${SWIN[*]}" "${VIT[*]}" "${DINO[*]}"; do
        step "parse_${cmd%% *}" 60 "$PY" -c 'import sys; sys.path.insert(0, "tools"); import benchmark
print(benchmark.parse_args(sys.argv[1:] + ["--device", "cuda"]))' $cmd
    done
    step bench_swin_t_1024 120 "$PY" tools/benchmark.py swin --size 32 --depths 1-1-1-1 --iters 1 \
        --extra --device cpu --out "$OUT/bench_swin_t_1024"
    step bench_vit_l_256 120 "$PY" tools/benchmark.py vit --arch vit_tiny_patch16_224 --size 32 \
        --iters 1 --device cpu --out "$OUT/bench_vit_l_256"
    skip bench_dino_800x1333 "dry run: parsed only"
else
    step bench_swin_t_1024 120 "$PY" tools/benchmark.py "${SWIN[@]}" --device cuda \
        --out "$OUT/bench_swin_t_1024"
    step bench_vit_l_256 120 "$PY" tools/benchmark.py "${VIT[@]}" --device cuda --out "$OUT/bench_vit_l_256"
    step bench_dino_800x1333 180 "$PY" tools/benchmark.py "${DINO[@]}" --device cuda \
        --out "$OUT/bench_dino_800x1333"
fi
finish

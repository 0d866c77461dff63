#!/usr/bin/env bash
# The one prepared GPU check: on a fresh, offline CUDA machine with this repository (Python 3.12 with
# torch, torchvision, timm, numpy, nvcc; no OpenMMLab package) and the wheel folder made here by
# `make gpu-wheels`, install the stack, run the CUDA tests and the Swin-T 1024² / ViT-L 256² /
# DINO 800×1333 benchmarks on the GPU, and compile mmcv's CPU ops, all under one time limit.
#
#   bash tools/gpu_check.sh [--dry-run] [--out DIR] [--time-limit SECONDS] [--wheels DIR] [--skip-wheels]
#
#   --dry-run      every step's CPU stand-in, on any machine: checks the wheel folder and that pip
#                  would install it for Python 3.12, unpacks and patches mmcv's sdist without
#                  compiling, runs the CUDA tests (skipped without a GPU, with the reason) and the
#                  focal-loss fallback tests, the benchmarks at tiny sizes on CPU (DINO: its GPU
#                  command parsed and its fallbacks checked)
#   --out DIR      where the answers go (default gpu_check_out/; empty, or a previous run's): exactly
#                  summary.md, summary.json and gpu_check.tgz (every log, the junit XML, the
#                  benchmarks' JSON/markdown/PNG), rewritten after every step
#   --time-limit   seconds for the whole run (default 500; keep it ~60 s under the device call's
#                  timeout so that the summary is written): a step never runs past it, the rest
#                  are skipped; exit code 3 then
#   --wheels DIR   the wheel folder (default .gpu_wheels/)
#   --skip-wheels  dry run without a wheel folder (CI): the wheel, install and mmcv steps are skipped
#
# Steps and caps (s), in priority order: environment 20, wheels 10, install 40, cuda-tests 140 with
# the mmcv build (140, in the background, niced) beside it, bench_swin_t_1024 80, fsdp 60,
# bench_vit_l_256 80, bench_dino_800x1333 100: 530 s of caps on the critical path; steps end well
# before their caps, and whatever no longer fits the time limit is skipped and reported. Every step runs
# on mmcv's Python layer with its compiled ops stubbed (tools/mmcv_build.py python-only) and
# DR2NET_MMCV_PYTORCH_FALLBACK=1, so a failed or slow mmcv build costs nothing else; the build only
# answers whether mmcv compiles there.
# PYTHON picks the interpreter (default: .venv/bin/python for --dry-run when there is one, else
# python3). Exit code: 0 all steps passed, 1 a step failed, 2 bad arguments, 3 out of time.
set -uo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
DRY=0; OUT=gpu_check_out; LIMIT=500; WHEELS=.gpu_wheels; SKIP_WHEELS=0
while [[ $# -gt 0 ]]; do
    case "$1" in
        --dry-run) DRY=1 ;;
        --skip-wheels) SKIP_WHEELS=1 ;;
        --out) OUT="${2:?--out needs a folder}"; shift ;;
        --wheels) WHEELS="${2:?--wheels needs a folder}"; shift ;;
        --time-limit) LIMIT="${2:?--time-limit needs seconds}"; shift ;;
        --mmcv-cuda)
            echo "gpu_check.sh: --mmcv-cuda was dropped: mmcv's 58 .cu files do not compile within one" \
                 "device call next to the checks; build mmcv with CUDA ops by \`make install\` on a" \
                 "GPU machine of your own (docs/gpu.md)" >&2
            exit 2 ;;
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
if [[ -n "${PYTHON:-}" ]]; then PY="$PYTHON"
elif (( DRY )) && [[ -x "$ROOT/.venv/bin/python" ]]; then PY="$ROOT/.venv/bin/python"
else PY=python3; fi
mkdir -p "$OUT" || exit 2
OUT="$(cd "$OUT" && pwd)"
for entry in "$OUT"/* "$OUT"/.[!.]*; do
    [[ -e "$entry" ]] || continue
    case "$(basename "$entry")" in
        summary.md|summary.json|gpu_check.tgz|.summary.md.tmp|.summary.json.tmp|.gpu_check.tgz.tmp) ;;
        *) echo "gpu_check.sh: --out $OUT holds '$(basename "$entry")': give an empty folder (only" \
                "summary.md, summary.json and gpu_check.tgz come back from the device)" >&2
           exit 2 ;;
    esac
done

START=$SECONDS
RESERVE=25  # seconds kept after the last step: a stopped step's 10 s of grace, the final summary
MAX_OUT_FILES=8
WORK="$(mktemp -d "${TMPDIR:-/tmp}/dr2net_gpu_check.XXXXXX")" || exit 2
LOGS="$WORK/gpu_check"  # everything that goes into gpu_check.tgz
SITE="$WORK/site"  # the wheels, installed (real run)
MMCV_PY="$WORK/mmcv_python"  # mmcv's Python layer, compiled ops stubbed
MMCV_BUILT="$WORK/mmcv_built"  # the compiled mmcv (real run), checked but not used by later steps
CORES="$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)"  # (nproc obeys OMP_NUM_THREADS)
PLAN="environment wheels install mmcv cuda-tests bench_swin_t_1024 fsdp bench_vit_l_256 bench_dino_800x1333"
mkdir -p "$LOGS" "$WORK/pids"
: >"$LOGS/steps.tsv"
export ROOT PY DRY WHEELS WORK LOGS SITE MMCV_PY MMCV_BUILT CORES
export PYTHONUNBUFFERED=1
# DINO's deformable attention and focal loss in PyTorch on CUDA (mmcv here never has CUDA ops)
export DR2NET_MMCV_PYTORCH_FALLBACK=1
# the stubbed mmcv, the installed wheels and this repository, ahead of the machine's own packages
export PYTHONPATH="$MMCV_PY:$SITE:$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PATH="$PATH:$SITE/bin"  # the carried ninja, if the machine has none

log() { echo "[gpu_check $((SECONDS - START))s] $*"; }

# report STATE: rewrite $OUT's summary.md, summary.json and gpu_check.tgz from $LOGS
report() {
    if ! "$PY" "$ROOT/tools/gpu_report.py" "$LOGS" "$OUT" --mode "$( ((DRY)) && echo dry || echo gpu)" \
            --limit "$LIMIT" --elapsed $((SECONDS - START)) --state "$1" --plan "$PLAN" \
            >"$WORK/report.log" 2>&1; then
        log "tools/gpu_report.py failed; a plain summary instead:"
        sed 's/^/    /' "$WORK/report.log"
        { echo "# tools/gpu_check.sh: $1 (tools/gpu_report.py failed, see gpu_check.tgz)"; echo
          echo '```'; cat "$LOGS/steps.tsv" "$WORK/report.log"; echo '```'; } >"$OUT/summary.md"
        tar -czf "$OUT/gpu_check.tgz" -C "$WORK" gpu_check
    fi
}

record() {  # NAME RESULT SECONDS CAP
    printf '%s\t%s\t%s\t%s\n' "$@" >>"$LOGS/steps.tsv"
}

# step NAME CAP CMD...: run CMD (a program or a function of this script) with its output in
# $LOGS/NAME.log, for at most CAP seconds and never into the final reserve (SIGINT, then KILL 10 s
# later); record the result in steps.tsv and rewrite the summary (not with NO_REPORT=1).
step() {
    local name="$1" cap="$2" budget rc began=$SECONDS pid result
    shift 2
    budget=$(( LIMIT - RESERVE - (SECONDS - START) ))
    (( budget > cap )) && budget=$cap
    if (( budget < 5 )); then
        log "$name: skipped (time limit ${LIMIT}s reached)"
        record "$name" "skipped: time limit" 0 "$cap"
        [[ -n "${NO_REPORT:-}" ]] || report "running"
        return 1
    fi
    log "$name: start (cap ${cap}s, ${budget}s now) -> $name.log"
    timeout --signal=INT --kill-after=10 "$budget" bash -c '"$@"' "$name" "$@" >"$LOGS/$name.log" 2>&1 &
    pid=$!
    echo "$pid" >"$WORK/pids/$name"
    wait "$pid"
    rc=$?
    rm -f "$WORK/pids/$name"
    if (( rc == 0 )); then
        log "$name: ok ($((SECONDS - began))s)"
        record "$name" ok $((SECONDS - began)) "$cap"
    else
        if (( rc == 124 || rc == 137 )); then
            if (( budget < cap )); then result="stopped: time limit (${budget}s)"
            else result="stopped at its cap (${cap}s)"; fi
        else
            result="failed: rc $rc"
        fi
        log "$name: $result; last lines:"
        tail -n 15 "$LOGS/$name.log" | sed 's/^/    /'
        record "$name" "$result" $((SECONDS - began)) "$cap"
    fi
    [[ -n "${NO_REPORT:-}" ]] || report "running (after $name)"
    return $(( rc != 0 ))
}

skip() {  # NAME REASON
    log "$1: skipped ($2)"
    record "$1" "skipped: $2" 0 ""
}

finish() {  # STATE (the exit code follows from steps.tsv)
    local state="$1" file code=0 count
    trap - INT TERM
    for file in "$WORK"/pids/*; do  # steps still running (the background build): stop them
        [[ -e "$file" ]] && kill -INT "$(cat "$file")" 2>/dev/null
    done
    wait
    if grep -qE $'\t(failed|stopped at its cap)' "$LOGS/steps.tsv"; then code=1; fi
    if grep -qE $'\t(skipped|stopped): time limit' "$LOGS/steps.tsv"; then code=3; fi
    [[ -z "$state" ]] && state="$( ((code == 0)) && echo "done, all steps passed" ||
                                   ( ((code == 3)) && echo "stopped on the time limit" ||
                                     echo "done, with failures" ))"
    report "$state"
    count=$(find "$OUT" -mindepth 1 | wc -l)
    log "$OUT holds $count files (at most $MAX_OUT_FILES come back): $(ls -A "$OUT" | tr '\n' ' ')"
    if (( count > MAX_OUT_FILES )); then
        log "ERROR: more than $MAX_OUT_FILES files in $OUT: some answers would not come back"
        (( code == 0 )) && code=1
    fi
    echo; cat "$OUT/summary.md"; echo
    log "$state"
    rm -rf "$WORK"
    exit $code
}
trap 'log "interrupted"; record interrupted "stopped: time limit" $((SECONDS - START)) ""
      finish "interrupted"' INT TERM

# ---- the steps' bodies (run by `step` in their own bash, hence exported) ----
toolchain() {  # compilers and build tools, one SUMMARY line each
    echo "SUMMARY c++: $(c++ --version 2>&1 | head -n 1)"
    local nvcc
    nvcc="$(nvcc --version 2>/dev/null | grep -o 'release [^,]*, V[0-9.]*')" || nvcc='not on PATH'
    echo "SUMMARY nvcc: $nvcc"
    echo "SUMMARY ninja: $(ninja --version 2>/dev/null || echo 'not on PATH') ($(command -v ninja || echo -))"
    echo "SUMMARY cores: $CORES (MAX_JOBS for the mmcv build)"
}

environment_step() {
    "$PY" -c '
import platform, sys, torch
print("SUMMARY python:", sys.version.split()[0], platform.machine(), sys.executable)
print("SUMMARY torch:", torch.__version__, "CUDA", torch.version.cuda, "cuDNN",
      torch.backends.cudnn.version())
print("SUMMARY CUDA available:", torch.cuda.is_available())
if torch.cuda.is_available():
    p = torch.cuda.get_device_properties(0)
    print("SUMMARY GPU:", p.name, f"sm_{p.major}{p.minor}, {p.total_memory / 2**30:.1f} GiB,",
          p.multi_processor_count, "SMs")
' || return 1
    toolchain
    nvidia-smi --query-gpu=driver_version --format=csv,noheader 2>/dev/null | sed 's/^/SUMMARY driver: /'
    return 0
}

# mmcv's Python layer with stubbed ops: what every later step imports
unpack_mmcv() {
    rm -rf "$WORK/mmcv_src" && mkdir -p "$WORK/mmcv_src" &&
        tar -xzf "$WHEELS"/mmcv-*.tar.gz -C "$WORK/mmcv_src" &&
        echo "SUMMARY mmcv: $("$PY" tools/mmcv_build.py python-only "$WORK"/mmcv_src/mmcv-* "$MMCV_PY")"
}

install_step() {
    set -e
    if (( DRY )); then  # what pip would install for Python 3.12 from the folder alone
        "$PY" -m pip install --dry-run --no-index --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_24_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --target "$WORK/dry_target" "$WHEELS"/*.whl
    else
        "$PY" -m pip install --no-index --no-deps --no-compile --no-cache-dir --target "$SITE" \
            "$WHEELS"/*.whl
    fi
    unpack_mmcv
}

mmcv_step() {
    set -e
    local src
    src="$(echo "$WORK"/mmcv_src/mmcv-*)"
    echo "SUMMARY mmcv C++ standard: $("$PY" tools/mmcv_build.py cxx-std "$src")"
    toolchain
    local build=(env CUDA_VISIBLE_DEVICES= FORCE_CUDA=0 MMCV_WITH_OPS=1 MAX_JOBS="$CORES" nice -n 10
                 "$PY" -m pip wheel --no-deps --no-build-isolation --no-index --no-cache-dir
                 -w "$WORK/mmcv_dist" .)
    if (( DRY )); then  # (ninja: the wheel check saw it in the folder)
        grep -n -- '-std=c++' "$src/setup.py"
        echo "SUMMARY mmcv build: dry run, not compiled; would run in $src: ${build[*]}"
        return 0
    fi
    if ! command -v ninja >/dev/null; then
        echo "SUMMARY mmcv build: not started: no ninja on PATH (torch would compile one file at a time)"
        return 1
    fi
    (cd "$src" && "${build[@]}")
    "$PY" -m pip install --no-index --no-deps --no-compile --target "$MMCV_BUILT" "$WORK"/mmcv_dist/mmcv-*.whl
    PYTHONPATH="$MMCV_BUILT:$SITE:$ROOT" "$PY" -c '
import torch
from mmcv.ops import get_compiler_version, get_compiling_cuda_version, nms
keep = nms(torch.tensor([[0., 0, 9, 9], [1, 1, 9, 9]]), torch.tensor([.9, .8]), .5)[1].tolist()
assert keep == [0], keep
print("SUMMARY mmcv build: ok, CPU ops compiled with", get_compiler_version(),
      "(CUDA ops:", get_compiling_cuda_version() + "), nms on CPU ok")
'
}

tests_step() {
    "$PY" -m pytest tests/test_cuda.py tests/test_focal_loss_fallback.py -v -s -rs -p no:cacheprovider \
        --junitxml="$LOGS/cuda_tests.xml"
}

# bench NAME GPU-ARGS... [-- TINY-ARGS...]: the GPU benchmark; dry run: parse its GPU arguments, then
# run TINY-ARGS on CPU (none: DINO, whose fallbacks are checked instead)
bench_step() {
    local name="$1"
    shift
    if (( ! DRY )); then
        "$PY" tools/benchmark.py "$@" --device cuda --out "$LOGS/$name"
        return
    fi
    "$PY" -c '
import sys
sys.path.insert(0, "tools")
import benchmark
from dr2net_mm import mmcv_ops
out, args = sys.argv[1], sys.argv[2:]
gpu, tiny = (args[:args.index("--")], args[args.index("--") + 1:]) if "--" in args else (args, [])
print("GPU command parses:", benchmark.parse_args(gpu + ["--device", "cuda"]))
info = mmcv_ops.status()
print("SUMMARY mmcv ops:", ", ".join(f"{k} {v}" for k, v in info.items()))
if gpu[0] == "dino" and not info["deform_attn"] == info["focal_loss"] == "pytorch fallback":
    sys.exit(f"DINO on CUDA needs both fallbacks here (DR2NET_MMCV_PYTORCH_FALLBACK=1): {info}")
if tiny:
    benchmark.main(tiny + ["--device", "cpu", "--out", out])
' "$LOGS/$name" "$@"
}
export -f toolchain environment_step unpack_mmcv install_step mmcv_step tests_step bench_step

# ---- the run ----
if (( DRY )); then MODE="dry run (CPU stand-ins)"; else MODE="GPU run"; fi
log "$MODE; answers in $OUT; time limit ${LIMIT}s; wheels $WHEELS; python $PY; work $WORK"
log "plan: $PLAN"

step environment 20 environment_step
if (( ! DRY )) && ! grep -q 'SUMMARY CUDA available: True' "$LOGS/environment.log"; then
    log "no CUDA device: this is the GPU run; use --dry-run on a machine without one"
    record no-cuda "failed: no CUDA device" 0 ""
    finish ""
fi

MMCV_PID=""
if (( SKIP_WHEELS )); then
    for name in wheels install mmcv; do skip "$name" "--skip-wheels"; done
else
    step wheels 10 "$PY" tools/gpu_wheels.py check "$WHEELS"
    step install 40 install_step
    # mmcv's CPU ops compile (niced, all cores) while the CUDA tests run; nothing waits for them
    NO_REPORT=1 step mmcv 140 mmcv_step &
    MMCV_PID=$!
fi

step cuda-tests 140 tests_step
if [[ -n "$MMCV_PID" ]]; then
    log "waiting for the mmcv build"
    wait "$MMCV_PID"
    report "running (after mmcv)"
fi

SWIN=(swin --size 1024 --depths 2-2-6-2 --iters 3 --extra)
VIT=(vit --arch vit_large_patch16_224 --size 256 --iters 3)
DINO=(dino --size 800x1333 --batch 1 --iters 3)
if (( DRY )); then
    TINY_SWIN=(-- swin --size 32 --depths 1-1-1-1 --iters 1 --extra)
    TINY_VIT=(-- vit --arch vit_tiny_patch16_224 --size 32 --iters 1)
else
    TINY_SWIN=(); TINY_VIT=()
fi
step bench_swin_t_1024 80 bench_step bench_swin_t_1024 "${SWIN[@]}" "${TINY_SWIN[@]}"
# FSDP1 (MMEngine's FSDPStrategy) and DeepSpeed ZeRO with reversible stages against the plain
# gradients (docs/distributed.md); dry run: the same script on CPU, where FSDP1 reports its refusal
step fsdp 60 "$PY" tools/fsdp_gpu_check.py --out "$LOGS/fsdp.json"
step bench_vit_l_256 80 bench_step bench_vit_l_256 "${VIT[@]}" "${TINY_VIT[@]}"
step bench_dino_800x1333 100 bench_step bench_dino_800x1333 "${DINO[@]}"
finish ""

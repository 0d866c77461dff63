#!/usr/bin/env bash
# Create or refresh the project virtualenv (called by `make install`). Idempotent: when
# nothing it depends on changed, it only re-runs the environment check (a few seconds).
#
# Environment variables:
#   DR2NET_VENV              venv directory (default: <repo>/.venv)
#   DR2NET_CONSTRAINTS       pin file of the stack to install (default:
#                            <repo>/requirements/constraints.txt; `make test-compat` passes
#                            requirements/constraints-compat.txt)
#   PYTHON                   interpreter used to create the venv (default: python3)
#   TORCH_INDEX_URL          pip index for torch/torchvision (default: the configured registry)
#   DR2NET_WHEEL_CACHE       colon-separated dirs holding prebuilt mmcv wheels, each with its
#                            torch-<version>/ subdirs (default: <repo>/../shared/wheels);
#                            ~/.cache/dr2net_mm/wheels/
#                            torch-<version>/ is always searched too, and receives our builds
#   DR2NET_MMCV_FROM_SOURCE=1  ignore installed mmcv and caches; build mmcv from the sdist
#   DR2NET_MMCV_DRY_RUN=1    if mmcv must be built: stop after downloading + patching the sdist
#   MAX_JOBS                 compile jobs for the mmcv build (default: 2)
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
VENV="${DR2NET_VENV:-$ROOT/.venv}"
PY="$VENV/bin/python"
CONSTRAINTS="${DR2NET_CONSTRAINTS:-$ROOT/requirements/constraints.txt}"
[[ -f "$CONSTRAINTS" ]] || { echo "[install] ERROR: DR2NET_CONSTRAINTS=$CONSTRAINTS is not a file" >&2; exit 1; }
export DR2NET_CONSTRAINTS="$CONSTRAINTS"  # read by dr2net_mm/env.py
STAMP="$VENV/.dr2net_install_stamp"
LOG="$VENV/dr2net_install.log"
FROM_SOURCE="${DR2NET_MMCV_FROM_SOURCE:-0}"
DRY_RUN="${DR2NET_MMCV_DRY_RUN:-0}"

say() { echo "[install] $*"; }
die() { echo "[install] ERROR: $*" >&2; exit 1; }

# Run a command with its output in $LOG; show the log's tail if it fails.
quiet() {
    if ! "$@" >>"$LOG" 2>&1; then
        echo "[install] FAILED: $*" >&2
        tail -n 40 "$LOG" >&2
        die "see $LOG"
    fi
}

# Run a long command like `quiet`, saying every $PROGRESS_EVERY seconds how long it has run and
# where its output goes (the torch download and the mmcv build take many minutes).
PROGRESS_EVERY="${DR2NET_PROGRESS_SECONDS:-30}"
with_progress() {  # <label> <command...>
    local label="$1" start=$SECONDS next pid rc=0
    shift
    "$@" >>"$LOG" 2>&1 &
    pid=$!
    next=$((SECONDS + PROGRESS_EVERY))
    while kill -0 "$pid" 2>/dev/null; do
        sleep 1
        if (( SECONDS >= next )) && kill -0 "$pid" 2>/dev/null; then
            say "$label: still running, $((SECONDS - start))s elapsed (log: $LOG)"
            next=$((SECONDS + PROGRESS_EVERY))
        fi
    done
    wait "$pid" || rc=$?
    if (( rc != 0 )); then
        echo "[install] FAILED: $*" >&2
        tail -n 40 "$LOG" >&2
        die "see $LOG"
    fi
}

pin() {  # version pinned for a distribution in constraints.txt
    local v
    v="$(sed -n "s/^$1==\([^ #]*\).*/\1/p" "$CONSTRAINTS")"
    [[ -n "$v" ]] || die "$1 is not pinned in $CONSTRAINTS"
    echo "$v"
}

pip_install() { quiet "$PY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS" "$@"; }

# ---- 0. fast path: same inputs as the last successful run, and the check passes ----
HASH="$( { cat "$CONSTRAINTS" "$ROOT/pyproject.toml" "$ROOT/tools/install.sh"
           echo "TORCH_INDEX_URL=${TORCH_INDEX_URL:-}"; } | sha256sum | cut -d' ' -f1)"
if [[ "$FROM_SOURCE$DRY_RUN" == 00 && -x "$PY" && -f "$STAMP" && "$(cat "$STAMP")" == "$HASH" ]]; then
    if "$PY" "$ROOT/dr2net_mm/env.py" --quiet; then
        say "environment up to date ($VENV)"
        exit 0
    fi
    say "environment check failed although nothing changed: repairing"
fi
START=$SECONDS

# ---- 1. virtualenv ----
if [[ ! -x "$PY" ]]; then
    step=$SECONDS
    "${PYTHON:-python3}" -c 'import sys; sys.exit(sys.version_info < (3, 9))' \
        || die "${PYTHON:-python3} is older than 3.9"
    "${PYTHON:-python3}" -m venv "$VENV"
    say "venv $VENV ... created ($((SECONDS - step))s)"
fi
: >"$LOG"

# ---- 2. torch + torchvision ----
TORCH_V="$(pin torch)"
step=$SECONDS
index=()
[[ -n "${TORCH_INDEX_URL:-}" ]] && index=(--index-url "$TORCH_INDEX_URL")
say "installing torch $TORCH_V (a large download; progress every ${PROGRESS_EVERY}s, log: $LOG)"
with_progress "torch install" "$PY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS" \
    "${index[@]}" "torch==$TORCH_V" "torchvision==$(pin torchvision)"
say "torch $TORCH_V, torchvision $(pin torchvision) ... ok ($((SECONDS - step))s)"

# ---- 3. mmcv with its C++ ops ----
MMCV_V="$(pin mmcv)"
# distribution version of torch: '2.14.1' (no '+cu130' local tag)
TORCH_DIST="$("$PY" -c 'import importlib.metadata as m; print(m.version("torch"))')"
CUDA=0
if command -v nvcc >/dev/null && "$PY" -c 'import sys, torch; sys.exit(not torch.cuda.is_available())' 2>/dev/null; then
    CUDA=1
fi
# A wheel is only usable for the torch version (and ops flavour) it was built against.
KEY="$TORCH_DIST"
if [[ $CUDA == 1 ]]; then KEY="$KEY-cuda"; fi
LOCAL_CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/dr2net_mm/wheels/torch-$KEY"

mmcv_works() {  # the pinned mmcv is installed and its ops run against this torch
    "$PY" - "$MMCV_V" >>"$LOG" 2>&1 <<'EOF'
import sys, torch, mmcv
from mmcv.ops import nms
assert mmcv.__version__ == sys.argv[1], mmcv.__version__
boxes = torch.tensor([[0., 0., 10., 10.], [1., 1., 10., 10.]])
assert nms(boxes, torch.tensor([0.9, 0.8]), 0.5)[1].tolist() == [0]
EOF
}

# Torch version a cache dir declares for its wheels: the dir name (torch-<key>, our own
# cache), else the README row naming the wheel ("... for torch **2.14.1** only").
declared_key() {  # <dir> <wheel file name>
    local dir="$1" name="$2" row version
    case "$(basename "$dir")" in torch-*) basename "$dir" | sed 's/^torch-//'; return ;; esac
    [[ -f "$dir/README.md" ]] || return 0
    row="$(grep -F "$name" "$dir/README.md" | head -n 1)" || return 0
    version="$(grep -oE 'torch[^0-9a-zA-Z]{0,4}[0-9]+\.[0-9]+(\.[0-9]+)?' <<<"$row" \
               | head -n 1 | grep -oE '[0-9]+\.[0-9]+(\.[0-9]+)?')" || return 0
    if grep -qi 'CUDA ops' <<<"$row"; then echo "$version-cuda"; else echo "$version"; fi
}

install_mmcv_wheel() {  # <wheel>: install, verify the ops, undo if they do not work
    "$PY" -m pip uninstall -y mmcv mmcv-lite >>"$LOG" 2>&1 || true
    if "$PY" -m pip install --disable-pip-version-check -c "$CONSTRAINTS" "$1" >>"$LOG" 2>&1 \
            && mmcv_works; then
        return 0
    fi
    "$PY" -m pip uninstall -y mmcv >>"$LOG" 2>&1 || true
    return 1
}

find_cached_mmcv() {  # install the first matching cached wheel whose ops work
    local dirs=() dir sub whl declared
    IFS=: read -r -a dirs <<<"${DR2NET_WHEEL_CACHE:-$(dirname "$ROOT")/shared/wheels}"
    # each cache dir and its torch-<version>/ subdirs (shared/wheels/torch-2.1.2: the compat stack)
    local roots=("${dirs[@]}")
    for dir in "${roots[@]}"; do
        for sub in "$dir"/torch-*/; do [[ -d "$sub" ]] && dirs+=("${sub%/}"); done
    done
    for dir in "${dirs[@]}" "$LOCAL_CACHE"; do
        [[ -d "$dir" ]] || continue
        for whl in "$dir"/mmcv-"$MMCV_V"-*.whl; do
            [[ -f "$whl" ]] || continue
            declared="$(declared_key "$dir" "$(basename "$whl")")"
            if [[ "$declared" != "$KEY" ]]; then
                say "skip $whl (built for torch ${declared:-?}, need $KEY)"
                continue
            fi
            if install_mmcv_wheel "$whl"; then
                say "mmcv $MMCV_V from $whl ... ok"
                return 0
            fi
            say "skip $whl (installed, but its ops do not work with torch $TORCH_DIST)"
        done
    done
    return 1
}

build_mmcv() {  # build a wheel from the registry's sdist into $LOCAL_CACHE, install it
    local work bvenv site src
    work="$(mktemp -d "${TMPDIR:-/tmp}/dr2net-mmcv.XXXXXX")"
    say "building mmcv $MMCV_V from source in $work (about 11 min on 2 cores; log: $LOG)"
    # Build venv: its own setuptools<70 (mmcv's setup.py needs pkg_resources) shadows the
    # project's, and a .pth file makes the project's torch importable without copying it.
    bvenv="$work/buildenv"
    quiet "$PY" -m venv "$bvenv"
    site="$("$bvenv/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')"
    "$PY" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])' >"$site/zz_dr2net_project.pth"
    quiet "$bvenv/bin/pip" install --disable-pip-version-check 'setuptools<70' wheel ninja
    quiet "$bvenv/bin/pip" download --disable-pip-version-check --no-deps --no-binary :all: \
        --no-build-isolation -d "$work" "mmcv==$MMCV_V"
    tar -xzf "$work/mmcv-$MMCV_V.tar.gz" -C "$work"
    src="$work/mmcv-$MMCV_V"
    # mmcv 2.1.0 asks for C++14/17; torch >= 2.14 headers need C++20 (known upstream issue). The
    # standard is read from torch's headers, the same decision as tools/gpu_check.sh's.
    local std_note
    std_note="$("$PY" "$ROOT/tools/mmcv_build.py" cxx-std "$src")" || die "C++ standard patch failed"
    say "$std_note"
    if [[ "$DRY_RUN" == 1 ]]; then
        grep -nE -- '-std=c\+\+' "$src/setup.py" | sed 's/^/[install]   /'
        say "dry run: stopping before compiling (sources kept in $work)"
        exit 0
    fi
    local extra=() whl
    [[ $CUDA == 1 ]] && extra=(FORCE_CUDA=1) && say "CUDA found: building mmcv's CUDA ops too"
    # PATH: torch's extension builder looks for the `ninja` binary there.
    with_progress "mmcv build" env PATH="$bvenv/bin:$PATH" MAX_JOBS="${MAX_JOBS:-2}" MMCV_WITH_OPS=1 "${extra[@]}" \
        "$bvenv/bin/pip" wheel --disable-pip-version-check --no-deps --no-build-isolation \
        --no-cache-dir -w "$work/dist" "$src"
    whl="$(ls "$work"/dist/mmcv-"$MMCV_V"-*.whl)"
    install_mmcv_wheel "$whl" || die "the freshly built mmcv wheel does not work; see $LOG"
    mkdir -p "$LOCAL_CACHE"
    cp "$whl" "$LOCAL_CACHE/"
    rm -rf "$work"
    say "mmcv $MMCV_V built into $LOCAL_CACHE ... ok"
}

step=$SECONDS
if [[ "$FROM_SOURCE" != 1 ]] && mmcv_works; then
    say "mmcv $MMCV_V (with ops) ... already ok"
elif [[ "$FROM_SOURCE" == 1 ]] || ! find_cached_mmcv; then
    build_mmcv
fi
say "mmcv step done ($((SECONDS - step))s)"

# ---- 4. the rest of the stack, then this package (editable) ----
step=$SECONDS
pip_install mmengine mmdet mmsegmentation timm pycocotools numpy opencv-python ftfy regex \
    pytest setuptools scikit-learn mmaction2 opencv-contrib-python importlib_metadata einops decord transformers h5py
say "mmengine $(pin mmengine), mmdet $(pin mmdet), mmseg $(pin mmsegmentation), mmaction2 $(pin mmaction2), timm $(pin timm) ... ok ($((SECONDS - step))s)"
step=$SECONDS
quiet "$PY" -m pip install --disable-pip-version-check --no-deps -e "$ROOT"
say "dr2net_mm (editable) ... ok ($((SECONDS - step))s)"

# ---- 5. check, then stamp ----
"$PY" "$ROOT/dr2net_mm/env.py" || die "environment check failed (see above)"
echo "$HASH" >"$STAMP"
say "done in $((SECONDS - START))s"

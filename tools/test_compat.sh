#!/usr/bin/env bash
# `make test-compat`: the second tested stack, the stock mmdet 3.3 one (torch 2.1.2, numpy 1.26,
# mmcv 2.1.0 built against torch 2.1.2, ...; requirements/constraints-compat.txt), in its own venv
# (default .venv-compat). Installs it with tools/install.sh, then runs the engine, backbone, hook and
# packaging tests and one tools/train.py iteration of the demo DINO config there. The mmcv wheel for
# torch 2.1.2 comes from ../shared/wheels/torch-2.1.2/ when present (without it the first run builds
# mmcv: 11-20 min on 2 cores). Not part of `make test`; .ci/run runs it after `make test`.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
export DR2NET_VENV="${DR2NET_COMPAT_VENV:-$ROOT/.venv-compat}"
export DR2NET_CONSTRAINTS="$ROOT/requirements/constraints-compat.txt"
PY="$DR2NET_VENV/bin/python"
TESTS=(tests/test_core_reversible.py tests/test_exact_streams.py tests/test_core_param_grads.py
       tests/test_swin.py tests/test_vit.py
       tests/test_alpha_beta_hook.py tests/test_packaging.py tests/test_import_graph.py)
START=$SECONDS
say() { echo "[test-compat] $*"; }

bash tools/install.sh
say "stack: $("$PY" -c 'import importlib.metadata as m
print(", ".join(f"{d} {m.version(d)}" for d in ("torch", "torchvision", "numpy", "mmcv",
      "mmengine", "mmdet", "mmsegmentation", "timm", "setuptools")))')"

step=$SECONDS
"$PY" -m pytest ${PYTEST_FLAGS:--q -ra} -m "not slow" "${TESTS[@]}"
say "tests ... ok ($((SECONDS - step))s)"

# One training iteration of the demo DINO config (2 generated images, batch 2), then validation
# on 2 images, through tools/train.py as a user runs it.
step=$SECONDS
work="$ROOT/work_dirs/compat_dino"
rm -rf "$work"
"$PY" -c "import sys; from dr2net_mm.demo.data import make_demo_coco, write_swin_official_checkpoint
make_demo_coco(sys.argv[1], num_train=2, num_val=2, image_size=(128, 128))
write_swin_official_checkpoint(sys.argv[1] + 'swin_t.pth')" "$work/data/"
OMP_NUM_THREADS=1 "$PY" tools/train.py configs/demo/dino_dr2net_swin_t_demo.py --work-dir "$work" \
    --cfg-options train_cfg.max_epochs=1 \
    train_dataloader.dataset.data_root="$work/data/" val_dataloader.dataset.data_root="$work/data/" \
    test_dataloader.dataset.data_root="$work/data/" \
    val_evaluator.ann_file="$work/data/annotations/instances_val.json" \
    test_evaluator.ann_file="$work/data/annotations/instances_val.json" \
    model.backbone.init_cfg.checkpoint="$work/data/swin_t.pth" | tee "$work.log" | { grep -E 'Epoch\(|bbox_mAP:|Error' || true; }
grep -q 'Epoch(train) \[1\]\[1/1\]' "$work.log" || { say "FAILED: no training iteration in $work.log"; exit 1; }
[[ -f "$work/epoch_1.pth" ]] || { say "FAILED: no checkpoint $work/epoch_1.pth"; exit 1; }
say "tools/train.py, 1 iteration of the demo DINO config ... ok ($((SECONDS - step))s)"
say "passed in $((SECONDS - START))s"

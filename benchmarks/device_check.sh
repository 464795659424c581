#!/usr/bin/env bash
# Issue 12's GPU checks as one command for a lent GPU machine (see benchmarks/RESULTS.md, GPU).
#
#   here:   bash benchmarks/device_check.sh --fetch-wheels   (once: the packages that machine's
#           image lacks, as cp312 wheels in .whl/, which git ignores; ~32 MB)
#   there:  run(command="bash benchmarks/device_check.sh", carry=[".whl"], timeout_s=560)
#
# It records, under $OUT: the GPU; benchmarks/inference.py's GPU rows (the default model as
# classify runs it; the Virchow2-shaped ViT-H/14 in bf16, plain and torch.compile'd: img/s,
# TFLOP/s, MFU); the crop benchmark on that machine's CPU cores (scaling with cores); and
# `classify --device cuda` end to end on the benchmark slide with its own timings, to see
# whether the crop path keeps the GPU busy (crop_wait_s against inference_s).
set -uo pipefail

# what the image lacks of the core dependencies these steps import (KINDS.md lists the image)
WHEELS=(openslide-python openslide-bin imagecodecs shapely simplejpeg)

if [[ "${1:-}" == "--fetch-wheels" ]]; then
    mkdir -p .whl
    for name in "${WHEELS[@]}"; do
        python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux1_x86_64 -d .whl "$name" || exit 1
    done
    du -sh .whl
    exit 0
fi

OUT=${OUT:-/tmp/wsi-atm-device}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
if compgen -G ".whl/*.whl" >/dev/null; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target /tmp/site .whl/*.whl || exit 1
    export PYTHONPATH="/tmp/site:$PWD"
else
    export PYTHONPATH="$PWD"
fi

step() {  # name, seconds, command...: runs it, keeps its output, never stops the script
    local name=$1 limit=$2
    shift 2
    echo "== $name" | tee -a "$OUT/summary.txt"
    timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
    local rc=$?
    tail -n 25 "$OUT/$name.txt" | tee -a "$OUT/summary.txt"
    echo "(rc $rc)" | tee -a "$OUT/summary.txt"
}

{ nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; nproc; \
  python3 -c "import torch; print(torch.__version__, torch.cuda.get_device_name())"; } \
  >"$OUT/machine.txt" 2>&1
cat "$OUT/machine.txt" >>"$OUT/summary.txt"

step inference 240 python3 benchmarks/inference.py --no-cpu --n 512 --compile
# writes the 20000² benchmark slide here (it cannot travel: 73 MB), then times the crop engine
step crops 200 python3 benchmarks/crops.py --keep /tmp/bench20k.svs
step classify 90 python3 - <<'EOF'
import json, subprocess, sys, time
from pathlib import Path
sys.path.insert(0, "benchmarks")
from classify import write_candidates

for n in (2000, 20000):
    det = Path(f"/tmp/cands{n}.csv")
    write_candidates(det, n, 20000, 0, clustered=True)
    out = Path(f"/tmp/classify{n}")
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "wsi_atm", "classify", "/tmp/bench20k.svs",
                    "--detections", str(det), "--out-dir", str(out), "--device", "cuda",
                    "--quiet"], check=True)
    wall = time.perf_counter() - t
    summary = json.loads(next(out.glob("*.summary.json")).read_text())
    print(n, "candidates:", f"{wall:.1f} s whole command;", "engine",
          summary["model"].get("engine"), summary["model"].get("precision"),
          json.dumps(summary["timings_s"]))
EOF
# `train --device cuda` (end-to-end, LoRA and linear probe) on tiny synthetic crops with the
# tests' small cards (a ResNet end to end, a ViT for the other two), each against the same run on the CPU: max |delta p| of the held-out
# predictions
step train 150 python3 - <<'EOF'
import json, subprocess, sys
from pathlib import Path
import numpy as np
sys.path.insert(0, ".")
from tests.train_helpers import TINY_CARD, TINY_VIT_CARD, write_synthetic_crops, write_tiny_card

data = write_synthetic_crops(Path("/tmp/train-data"))
cnn = write_tiny_card(Path("/tmp/train-cnn"), TINY_CARD)
vit = write_tiny_card(Path("/tmp/train-vit"), TINY_VIT_CARD)
for mode in ("end-to-end", "lora", "linear-probe"):
    card = cnn if mode == "end-to-end" else vit
    probs = {}
    for device in ("cuda", "cpu"):
        out = Path(f"/tmp/train-{mode}-{device}")
        rc = subprocess.run([sys.executable, "-m", "wsi_atm", "train", "--data", str(data),
                             "--model", str(card), "--mode", mode, "--out", str(out),
                             "--epochs", "2", "--folds", "2", "--device", device,
                             "--quiet"]).returncode
        results = sorted(out.glob("fold_*/result.json"))
        probs[device] = np.concatenate([json.loads(r.read_text())["predictions"]["p_atypical"]
                                        for r in results]) if rc == 0 and results else None
        print(mode, device, "rc", rc, "folds", len(results))
    if probs["cuda"] is not None and probs["cpu"] is not None:
        print(mode, "max |dp| cuda vs cpu", float(np.abs(probs["cuda"] - probs["cpu"]).max()))
EOF
exit 0

#!/usr/bin/env bash
# Set up .venv, then classify the bundled sample slide with the bundled default model.
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/setup.sh
out=${1:-out/sample}
.venv/bin/wsi-atm classify sample_slides/cmu_small_region.svs \
  --detections sample_slides/cmu_small_region.candidates.csv --out-dir "$out" --points-json
echo "outputs in $out/: cmu_small_region.{geojson,csv,summary.json,png,points.json}"

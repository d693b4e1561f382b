#!/usr/bin/env bash
# The main job on bundled data: read the seed error's checkpoint, explain the mismatch, fix it,
# prove it loads; strip a DataParallel prefix; convert Keras weights (see README).
set -euo pipefail
cd "$(dirname "$0")/.."
D=tests/data
OUT=demo-out
mkdir -p "$OUT"
say() { printf '\n\033[1m$ %s\033[0m\n' "$*"; }
run() { say "$*"; "$@"; }

run ckptfix inspect $D/torch/seed_conv10.pt
say "ckptfix diff $D/torch/seed_conv10.pt --target 'Conv2d(3, 15, 5)'   # exit 1: does not fit"
ckptfix diff $D/torch/seed_conv10.pt --target 'Conv2d(3, 15, 5)' || true
run cat configs/seed-pad-conv.yaml
run ckptfix apply $D/torch/seed_conv10.pt -r seed-pad-conv -o $OUT/seed_conv15.safetensors --force
run ckptfix check $OUT/seed_conv15.safetensors --target 'Conv2d(3, 15, 5)'
run python - <<'PY'
import torch
from safetensors.torch import load_file
old, new = torch.nn.Conv2d(3, 10, 5), torch.nn.Conv2d(3, 15, 5)
old.load_state_dict(torch.load("tests/data/torch/seed_conv10.pt", weights_only=True))
new.load_state_dict(load_file("demo-out/seed_conv15.safetensors"), strict=True)
x = torch.randn(1, 3, 32, 32)
print("strict load ok; first 10 channels identical:", torch.equal(new(x)[:, :10], old(x)))
PY
run ckptfix apply $D/torch/ddp_net.pt -r strip-ddp-prefix --target tests/nets.py:SmallNet -o $OUT/ddp_net.safetensors --force
if [ -f configs/keras-to-torch.yaml ]; then
  run ckptfix apply $D/keras/tiny_cnn.keras -r keras-to-torch -r examples/tiny_cnn.yaml -o $OUT/tiny_cnn.safetensors --force
fi
printf '\ndemo done: outputs in %s/\n' "$OUT"

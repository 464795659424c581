"""Inference throughput: the default model on CPU, and Virchow2-sized ViT-H/14 on a GPU.

    python benchmarks/inference.py [--model NAME] [--n 512] [--gpu-batches 64,128,256,512]
                                   [--compile] [--no-cpu]

CPU: img/s of the bundled default model's fold ensemble (what `classify` runs) on both engines
(ONNX Runtime and PyTorch) with their largest probability difference, against a naive baseline
(one fold model at a time, batch 1, float32, no inference_mode), in one run.
GPU (when CUDA is present): the default model as `classify --device cuda` runs it, and the
Virchow2 architecture (ViT-H/14, SwiGLU, 4 register tokens; random
weights) at 224 px in bf16 for each batch size, with achieved TFLOP/s and MFU. FLOPs are counted
analytically as 2 × multiply-accumulates of every matmul in the forward pass (patch embedding,
qkv, attention scores and weighted sum, projection, SwiGLU MLP, head), ignoring norms,
activations and softmax; MFU = achieved / the GPU's published dense bf16 peak.
"""

from __future__ import annotations

import argparse
import copy
import os
import time
from collections.abc import Callable

import numpy as np
import torch

from wsi_atm.infer import Classifier, set_cpu_threads
from wsi_atm.models.registry import find_card

PEAK_BF16_TFLOPS = {"H100": 989.0, "H200": 989.0, "A100": 312.0, "L40S": 362.0}


def time_it(fn: Callable[[], object], repeats: int = 3) -> float:
    fn()  # warm-up
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t)
    return best


def cpu_section(model: str | None, n: int) -> list[str]:
    card = find_card(model)
    crops = np.random.default_rng(0).integers(0, 255, (n, card.crop_size, card.crop_size, 3),
                                              dtype=np.uint8)
    set_cpu_threads()
    clf = Classifier(card, device="cpu", engine="torch")
    engine = time_it(lambda: clf.predict(crops))
    fast = Classifier(card, device="cpu", engine="onnx")
    onnx_s = time_it(lambda: fast.predict(crops))
    delta = float(np.abs(fast.predict(crops) - clf.predict(crops)).max())

    # The naive loop is slow: time it on a slice and scale to n.
    small = max(16, n // 8)
    crops_small = crops[:small]

    # The naive path: plain NCHW copies of the same fold models, one crop at a time.
    plain = [copy.deepcopy(net).to(memory_format=torch.contiguous_format) for net in clf.nets]

    def naive_small() -> None:
        for net in plain:
            for i in range(len(crops_small)):
                x = torch.from_numpy(crops_small[i : i + 1]).permute(0, 3, 1, 2)
                with torch.no_grad():
                    torch.sigmoid(net(clf.transform(x)))

    naive_s = time_it(naive_small, repeats=1) * n / small
    folds = len(clf.nets)
    return [
        f"| CPU ({os.cpu_count()} cores, {torch.get_num_threads()} threads) | {card.name} "
        f"({folds} folds) | --engine onnx (ONNX Runtime), batch {fast.batch_size}, "
        f"max |Δp| vs torch {delta:.1e} | {n / onnx_s:.1f} img/s | "
        f"{naive_s / onnx_s:.2f}× naive |",
        f"| | | --engine torch: batch {clf.batch_size}, channels-last, inference_mode "
        f"| {n / engine:.1f} img/s | {naive_s / engine:.2f}× naive |",
        f"| | | naive: batch 1, one fold at a time | {n / naive_s:.1f} img/s | 1.00× |",
    ]


def vit_h_flops(tokens: int, dim: int = 1280, depth: int = 32, hidden: int = 6832,
                patch: int = 14, img: int = 224) -> float:
    """Forward FLOPs of one Virchow2-shaped image (2 × MACs of every matmul)."""
    patches = (img // patch) ** 2
    embed = patches * (3 * patch * patch) * dim
    per_block = (
        tokens * dim * 3 * dim  # qkv
        + 2 * tokens * tokens * dim  # scores + weighted sum
        + tokens * dim * dim  # proj
        + tokens * dim * hidden  # SwiGLU fc1 (packed: gate and value, 2 × hidden/2)
        + tokens * (hidden // 2) * dim  # fc2
    )
    return 2.0 * (embed + depth * per_block + dim)


def default_gpu_row(model: str | None, n: int) -> str:
    """The card `classify` would run, on the GPU, its own batch size: in the precision `auto`
    picks for it and in the other one, with how far apart their P(atypical) lie."""
    card = find_card(model)
    crops = np.random.default_rng(0).integers(0, 255, (n, card.crop_size, card.crop_size, 3),
                                              dtype=np.uint8)
    rows, probs = [], []
    for precision in ("auto", "float32" if card.kind != "cnn" else "bf16"):
        clf = Classifier(card, device="cuda", precision=precision)

        def run(clf: Classifier = clf) -> None:
            probs.append(clf.predict(crops))
            torch.cuda.synchronize()

        t = time_it(run)
        rows.append(f"| {torch.cuda.get_device_name()} | {card.name} ({len(clf.nets)} folds) | "
                    f"classify's engine, batch {clf.batch_size}, {clf.precision}"
                    f"{' (auto)' if precision == 'auto' else ''} | {n / t:.0f} img/s | |")
    delta = np.abs(probs[0] - probs[-1])
    rows.append(f"(those two precisions on {n} random crops: max |Δp| {delta.max():.3g}, "
                f"calls flipped at 0.5: {np.mean((probs[0] > 0.5) != (probs[-1] > 0.5)):.1%})")
    return "\n".join(rows)


def gpu_section(batches: list[int], compiled: bool = False) -> list[str]:
    import timm
    from timm.layers import SwiGLUPacked

    name = torch.cuda.get_device_name()
    peak = next((v for k, v in PEAK_BF16_TFLOPS.items() if k in name), None)
    model = timm.create_model(
        "vit_huge_patch14_224", pretrained=False, num_classes=0, reg_tokens=4, init_values=1e-5,
        mlp_ratio=5.3375, mlp_layer=SwiGLUPacked, act_layer=torch.nn.SiLU, no_embed_class=True,
    ).cuda().eval().to(memory_format=torch.channels_last)
    if compiled:
        model = torch.compile(model)
    tokens = 1 + 4 + (224 // 14) ** 2
    hidden = model.blocks[0].mlp.fc1.out_features
    flops = vit_h_flops(tokens, hidden=hidden)
    rows = []
    for bs in batches:
        x = torch.randn(bs, 3, 224, 224, device="cuda").contiguous(
            memory_format=torch.channels_last)

        def step(x: torch.Tensor = x) -> None:
            with torch.inference_mode(), torch.autocast("cuda", dtype=torch.bfloat16):
                for _ in range(5):
                    model(x)
            torch.cuda.synchronize()

        t = time_it(step) / 5
        tflops = flops * bs / t / 1e12
        mfu = f"{tflops / peak:.1%}" if peak else "n/a"
        label = "torch.compile, " if compiled else ""
        rows.append(f"| {name} | Virchow2-shaped ViT-H/14 bf16 | {label}batch {bs} | "
                    f"{bs / t:.0f} img/s | {tflops:.0f} TFLOP/s, MFU {mfu} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", default=None)
    ap.add_argument("--n", type=int, default=512)
    ap.add_argument("--gpu-batches", default="64,128,256,512")
    ap.add_argument("--compile", action="store_true", help="also time the ViT torch.compile'd")
    ap.add_argument("--no-cpu", action="store_true", help="skip the CPU section")
    args = ap.parse_args()
    print("| device | model | path | throughput | ratio / FLOPs |")
    print("|---|---|---|---|---|")
    if not args.no_cpu:
        for row in cpu_section(args.model, args.n):
            print(row, flush=True)
    if torch.cuda.is_available():
        print(default_gpu_row(args.model, 4 * args.n), flush=True)
        batches = [int(b) for b in args.gpu_batches.split(",")]
        for row in gpu_section(batches):
            print(row, flush=True)
        if args.compile:
            for row in gpu_section(batches, compiled=True):
                print(row, flush=True)
    else:
        print("| (no CUDA device: GPU section not run) | | | | |")


if __name__ == "__main__":
    main()

"""Which CPU route runs the default model fastest with its probabilities unchanged?

    python benchmarks/cpu_routes.py [--model NAME] [--n 512] [--compile]

Times the card's network on real crops (AMi-Br's where ``../shared/data`` is beside the
checkout, else crops cut from the bundled CMU SVS) through every CPU route that could replace
classify's engine, in one run, and prints img/s, the speed against classify's ONNX Runtime
engine, and each route's largest |Δp| against the PyTorch path. A route qualifies only with
max |Δp| ≤ 1e-3 (``wsi_atm.engines.MAX_DELTA_P``), the rule the ONNX engine is held to.

Routes: PyTorch eager (the reference); ONNX Runtime float32 (classify's ``--engine onnx``);
ONNX Runtime int8, static QDQ quantisation of the convolutions calibrated on other real crops;
PyTorch bfloat16 autocast (AMX/AVX-512-BF16 where the CPU has them); OpenVINO float32 and at
its default CPU precision (which is bfloat16 on CPUs with native bf16), when ``openvino`` is
importable (it is not a dependency: ``pip install openvino`` to include it); and with
``--compile``, ``torch.compile`` (inductor; slow to compile).
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))  # a checkout runs without installing wsi_atm

import torch  # noqa: E402
from PIL import Image  # noqa: E402

from wsi_atm.engines import MAX_DELTA_P, OnnxNet, graph_path, network_key, sigmoid  # noqa: E402
from wsi_atm.infer import Classifier, set_cpu_threads  # noqa: E402
from wsi_atm.models.card import ModelCard, atypical_sign  # noqa: E402
from wsi_atm.models.registry import find_card  # noqa: E402

Run = Callable[[np.ndarray], np.ndarray]  # uint8 crops (N, H, W, 3) → P(atypical) (N,)
AMIBR = HERE.parents[1] / "shared" / "data" / "amibr-train"


def real_crops(n: int, calibration: int) -> tuple[np.ndarray, np.ndarray, str]:
    """``n`` crops to time and check, and ``calibration`` other crops for int8 scales."""
    if (AMIBR / "Normal").is_dir():
        files = [f for kind in ("Atypical", "Normal") for f in sorted((AMIBR / kind).glob("*.png"))]
        picked = np.random.default_rng(0).permutation(len(files))[: n + calibration]
        crops = np.stack([np.asarray(Image.open(files[i]).convert("RGB")) for i in picked])
        return crops[:n], crops[n:], "AMi-Br training crops"
    from wsi_atm.crops import plan_crops, stream_crops
    from wsi_atm.slides import open_slide

    rng = np.random.default_rng(0)
    with open_slide(HERE.parent / "sample_slides" / "cmu_small_region.svs") as slide:
        w, h = slide.dimensions
        xs, ys = rng.uniform(0.1 * w, 0.9 * w, n + calibration), rng.uniform(0.1 * h, 0.9 * h,
                                                                           n + calibration)
        crops = np.empty((n + calibration, 128, 128, 3), np.uint8)
        for batch in stream_crops(slide, xs, ys, plan=plan_crops(slide)):
            crops[batch.indices] = batch.images
    return crops[:n], crops[n:], "crops of the bundled CMU SVS"


def rate(run: Run, crops: np.ndarray, repeats: int = 5) -> float:
    run(crops)  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        run(crops)
        best = min(best, time.perf_counter() - start)
    return len(crops) / best


def batched(logits: Callable[[np.ndarray], np.ndarray], card: ModelCard) -> Run:
    sign, size = atypical_sign(card), card.batch_size
    return lambda x: np.concatenate([sigmoid(sign * logits(x[i : i + size]))
                                     for i in range(0, len(x), size)])


def int8_route(graph: Path, calibration: np.ndarray, card: ModelCard, tmp: Path) -> Run:
    from onnxruntime.quantization import (
        CalibrationDataReader,
        QuantFormat,
        QuantType,
        quantize_static,
    )
    from onnxruntime.quantization.shape_inference import quant_pre_process

    class Reader(CalibrationDataReader):  # type: ignore[misc]
        def __init__(self) -> None:
            self.batches = iter([{"x": calibration[i : i + 32]}
                                 for i in range(0, len(calibration), 32)])

        def get_next(self) -> dict[str, np.ndarray] | None:
            return next(self.batches, None)

    prepared, quantised = tmp / "prepared.onnx", tmp / "int8.onnx"
    quant_pre_process(str(graph), str(prepared))
    quantize_static(str(prepared), str(quantised), Reader(), quant_format=QuantFormat.QDQ,
                    per_channel=True, activation_type=QuantType.QUInt8,
                    weight_type=QuantType.QInt8, op_types_to_quantize=["Conv", "Gemm", "MatMul"])
    return batched(OnnxNet(quantised, torch.get_num_threads()), card)


def openvino_routes(graph: Path, card: ModelCard) -> dict[str, Run]:
    try:
        import openvino as ov
    except ImportError:
        return {}
    core = ov.Core()
    model = core.read_model(str(graph))
    routes: dict[str, Run] = {}
    for label, config in (("float32", {"INFERENCE_PRECISION_HINT": "f32"}), ("default", {})):
        compiled = core.compile_model(model, "CPU", {
            "INFERENCE_NUM_THREADS": torch.get_num_threads(), **config})
        precision = compiled.get_property("INFERENCE_PRECISION_HINT").to_string()  # f32, bf16
        request = compiled.create_infer_request()

        def logits(x: np.ndarray, request: object = request) -> np.ndarray:
            out = request.infer({0: np.ascontiguousarray(x)})  # type: ignore[attr-defined]
            return np.asarray(next(iter(out.values())), np.float32).reshape(len(x))

        routes[f"OpenVINO {ov.__version__.split('-')[0]}, {label} precision ({precision})"] = \
            batched(logits, card)
    return routes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default=None, help="model card (default: the default)")
    parser.add_argument("--n", type=int, default=512, help="crops timed and checked")
    parser.add_argument("--compile", action="store_true", help="also torch.compile (slow)")
    args = parser.parse_args(argv)

    card = find_card(args.model)
    crops, calibration, source = real_crops(args.n, 256)
    set_cpu_threads()
    with tempfile.TemporaryDirectory(prefix="wsi-atm-routes-") as tmp_name:
        tmp = Path(tmp_name)
        os.environ["WSI_ATM_CACHE"] = str(tmp / "cache")  # the graph is built here, fresh
        reference = Classifier(card, device="cpu", engine="torch")
        engine = Classifier(card, device="cpu", engine="onnx")
        graph = graph_path(engine.weight_sha256[0], network_key(card))
        routes: dict[str, Run] = {
            "PyTorch eager, float32 (classify --engine torch; the reference)": reference.predict,
            "ONNX Runtime, float32 (classify --engine onnx)": engine.predict,
            "ONNX Runtime, int8 static QDQ (convolutions, calibrated on 256 other crops)":
                int8_route(graph, calibration, card, tmp),
        }

        def bf16(x: np.ndarray) -> np.ndarray:
            with torch.autocast("cpu", dtype=torch.bfloat16):
                return reference.predict(x)

        routes["PyTorch eager, bfloat16 autocast"] = bf16
        routes.update(openvino_routes(graph, card))
        if args.compile:
            compiled = Classifier(card, device="cpu", engine="torch", compile=True)
            routes["torch.compile (inductor), float32"] = compiled.predict
        expected = reference.predict(crops)
        rows = []
        for name, run in routes.items():
            p = run(crops)
            rows.append((name, rate(run, crops), float(np.abs(p - expected).max()),
                         float(np.mean((p >= card.threshold) == (expected >= card.threshold)))))
    base = next(r for name, r, _, _ in rows if name.startswith("ONNX Runtime, float32"))
    print(f"{card.name}: {args.n} {source}, {os.cpu_count()} cores, "
          f"{torch.get_num_threads()} threads, batch {card.batch_size}\n")
    print("| route | img/s | ÷ classify's engine | max \\|Δp\\| vs PyTorch | same call | "
          f"qualifies (≤ {MAX_DELTA_P:g}) |")
    print("|---|---:|---:|---:|---:|---|")
    for name, r, delta, same in rows:
        print(f"| {name} | {r:.0f} | {r / base:.2f} | {delta:.1e} | {same:.3f} | "
              f"{'yes' if delta <= MAX_DELTA_P else 'no'} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

"""Write the ONNX fixtures in tests/data/onnx/ (run in a throwaway venv with onnx, onnxscript and
onnxruntime; ckptfix and its tests never need them):

    python3 -m venv /work/venv-onnx && /work/venv-onnx/bin/pip install torch==2.13.0 onnx onnxscript onnxruntime
    /work/venv-onnx/bin/python tools/make_onnx_fixtures.py

Each model of tests/onnx_nets.py, with seeded random weights (BatchNorm running statistics from a
few training steps), is exported by torch.onnx with both exporters:

* ``<name>_ts.onnx``: the TorchScript-based exporter (``dynamo=False``). The CNN is exported in
  training mode, so that its BatchNorms are not folded into the convolutions, then switched back
  to inference (``training_mode=0``, the running-statistics outputs removed): what an exported
  model with BatchNormalization nodes is.
* ``<name>_dyn.onnx``: the dynamo exporter (``dynamo=True``; for the CNN ``optimize=False``, so
  that BatchNorm is not folded either; the others optimized, which folds the ``Transpose`` of a
  MatMul's weight into an anonymous ``val_N``). Node metadata other than the name scopes and
  class hierarchy (stack traces with this machine's paths) is removed.
* ``mlp_ext/model.onnx`` + ``mlp_ext/weights.bin``: ``mlp_ts`` with every tensor in external data
  (``onnx.save_model(..., save_as_external_data=True)``).
* ``helper_anon.onnx``: written with onnx.helper: tf2onnx-style node names, anonymous
  ``const_fold_opt__N`` weights, a Conv whose weight is a ``Constant`` node, a Gemm with
  ``transB=0`` and typed (``float_data``) biases, a square MatMul + Add. Its weights are those of
  ``HelperTwin``, laid out as ONNX stores them.

Beside each, ``<name>.npz`` holds the input ``x`` and onnxruntime's output ``y`` (the source
framework's result, which the converted PyTorch model must reproduce).
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import TensorProto, helper, numpy_helper

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests" / "data" / "onnx"
sys.path.insert(0, str(ROOT / "tests"))

import onnx_nets  # noqa: E402

KEEP_METADATA = {"pkg.torch.onnx.name_scopes", "pkg.torch.onnx.class_hierarchy", "namespace"}


def randomize(model: torch.nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.5)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    if bns:  # running statistics that are not 0 and 1
        model.train()
        for _ in range(3):
            model(torch.randn(4, 3, 6, 6, generator=g) * 2 + 1)
    model.eval()


def inference_batchnorm(m: onnx.ModelProto) -> None:
    """A training-mode export -> inference: BatchNormalization with training_mode=0, one output."""
    for node in m.graph.node:
        if node.op_type == "BatchNormalization":
            for a in list(node.attribute):
                if a.name == "training_mode":
                    node.attribute.remove(a)
            del node.output[1:]


def strip_metadata(m: onnx.ModelProto) -> None:
    for node in m.graph.node:
        keep = [(p.key, p.value) for p in node.metadata_props if p.key in KEEP_METADATA]
        del node.metadata_props[:]
        for k, v in keep:
            node.metadata_props.add(key=k, value=v)
    del m.metadata_props[:]


def run(path: Path, x: np.ndarray) -> np.ndarray:
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    return sess.run(None, {sess.get_inputs()[0].name: x})[0]


def save_ref(name: str, x: np.ndarray, y: np.ndarray) -> None:
    np.savez(OUT / f"{name}.npz", x=x, y=y)


def export(name: str, model: torch.nn.Module, x: torch.Tensor) -> None:
    for kind in ("ts", "dyn"):
        path = OUT / f"{name}_{kind}.onnx"
        if kind == "ts":
            training = torch.onnx.TrainingMode.TRAINING if name == "cnn" else torch.onnx.TrainingMode.EVAL
            torch.onnx.export(model, (x,), str(path), dynamo=False, training=training,
                              do_constant_folding=name != "cnn", input_names=["x"])
            m = onnx.load(str(path))
            inference_batchnorm(m)
        else:
            prog = torch.onnx.export(model, (x,), dynamo=True, optimize=name != "cnn")
            m = prog.model_proto
        strip_metadata(m)
        onnx.save_model(m, str(path))
        y = run(path, x.numpy())
        with torch.no_grad():
            want = model(x).numpy()
        assert np.abs(y - want).max() < 1e-5, (path, np.abs(y - want).max())
        save_ref(f"{name}_{kind}", x.numpy(), y)
        print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes, max |ort - torch| {np.abs(y - want).max():.2e}")


def external(src: str, dest: str) -> None:
    d = OUT / dest
    d.mkdir(exist_ok=True)
    for old in d.iterdir():  # onnx appends to an existing data file
        old.unlink()
    m = onnx.load(str(OUT / f"{src}.onnx"))
    onnx.save_model(m, str(d / "model.onnx"), save_as_external_data=True, all_tensors_to_one_file=True,
                    location="weights.bin", size_threshold=0)
    ref = np.load(OUT / f"{src}.npz")
    y = run(d / "model.onnx", ref["x"])
    assert np.array_equal(y, ref["y"])
    save_ref(dest, ref["x"], y)
    print(f"{d.relative_to(ROOT)}: model.onnx {(d / 'model.onnx').stat().st_size} + weights.bin "
          f"{(d / 'weights.bin').stat().st_size} bytes")


def helper_model() -> None:
    twin = onnx_nets.HelperTwin()
    randomize(twin, 5)
    sd = {k: v.numpy() for k, v in twin.state_dict().items()}
    init = lambda name, arr: numpy_helper.from_array(arr.astype(np.float32), name)  # noqa: E731
    typed = lambda name, arr: helper.make_tensor(name, TensorProto.FLOAT, arr.shape,  # noqa: E731
                                                 arr.astype(np.float32).ravel().tolist())
    conv_w = numpy_helper.from_array(sd["features.weight"], "const_fold_opt__3")
    nodes = [
        helper.make_node("Constant", [], ["const_fold_opt__3"], name="model/conv2d/Conv/ReadVariableOp",
                         value=conv_w),
        helper.make_node("Conv", ["x", "const_fold_opt__3", "const_fold_opt__4"], ["c"], name="model/conv2d/Conv"),
        helper.make_node("Relu", ["c"], ["r"], name="model/conv2d/Relu"),
        helper.make_node("ReduceMean", ["r", "const_axes__7"], ["m"], name="model/global_average_pooling2d/Mean",
                         keepdims=0),
        helper.make_node("Gemm", ["m", "const_fold_opt__5", "const_fold_opt__6"], ["h"], name="model/dense/Gemm",
                         transB=0),
        helper.make_node("Relu", ["h"], ["hr"], name="model/dense/Relu"),
        helper.make_node("MatMul", ["hr", "const_fold_opt__8"], ["o"], name="model/dense_1/MatMul"),
        helper.make_node("Add", ["o", "const_fold_opt__9"], ["y"], name="model/dense_1/BiasAdd"),
    ]
    inits = [
        typed("const_fold_opt__4", sd["features.bias"]),
        numpy_helper.from_array(np.array([2, 3], dtype=np.int64), "const_axes__7"),
        init("const_fold_opt__5", sd["hidden.weight"].T),          # transB=0: (in, out)
        typed("const_fold_opt__6", sd["hidden.bias"]),
        init("const_fold_opt__8", sd["out.weight"].T),             # MatMul B: (in, out), square
        init("const_fold_opt__9", sd["out.bias"]),
    ]
    graph = helper.make_graph(nodes, "tf2onnx",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [None, 3, 6, 6])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [None, 8])], inits)
    m = helper.make_model(graph, producer_name="tf2onnx", opset_imports=[helper.make_opsetid("", 18)])
    m.ir_version = 8
    onnx.checker.check_model(m)
    path = OUT / "helper_anon.onnx"
    onnx.save_model(m, str(path))
    x = torch.randn(2, 3, 6, 6, generator=torch.Generator().manual_seed(6))
    y = run(path, x.numpy())
    with torch.no_grad():
        want = twin(x).numpy()
    assert np.abs(y - want).max() < 1e-5
    save_ref("helper_anon", x.numpy(), y)
    print(f"{path.relative_to(ROOT)}: {path.stat().st_size} bytes")


def main() -> None:
    OUT.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(0)
    g = lambda seed: torch.Generator().manual_seed(seed)  # noqa: E731
    models = {
        "cnn": (onnx_nets.OnnxCNN(), torch.randn(2, 3, 6, 6, generator=g(1))),
        "mlp": (onnx_nets.OnnxMLP(), torch.randn(3, 6, generator=g(2))),
        "emb": (onnx_nets.OnnxEmbLN(), torch.tensor([[1, 2, 3, 10], [4, 5, 0, 7]])),
        "convt": (onnx_nets.OnnxConvT(), torch.randn(2, 4, 3, 3, generator=g(3))),
    }
    for i, (name, (model, x)) in enumerate(models.items()):
        randomize(model, 10 + i)
        export(name, model, x)
    external("mlp_ts", "mlp_ext")
    helper_model()


if __name__ == "__main__":
    main()

"""The oracle for the zoo twins: proves tests/zoo_twins.py right without ckptfix.

For every (Keras model, twin) in zoo_twins.ZOO it rebuilds the Keras model (tools/make_keras_zoo.py),
loads NAME.weights.h5, checks that Keras reproduces the stored output, converts the Keras layers'
own weights (layer.weights, by hand, one function per twin below) into the twin's state dict,
loads it strictly and compares the twin's output with Keras' (max abs error <= 1e-5).
Runs in the throwaway TensorFlow venv with torch installed, from the repository root:

    /tmp/tfvenv/bin/pip install torch
    /tmp/tfvenv/bin/python tools/zoo_oracle.py tests/data/zoo

Nothing here is part of ckptfix: it is the independent reference the end-to-end test relies on.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT / "tools"), str(ROOT / "tests")]

import make_keras_zoo as mk  # noqa: E402
import torch  # noqa: E402
import zoo_twins  # noqa: E402

KERAS_EPS = 1e-3
TOL = 1e-5


# ----------------------------------------------------------------------------- layout helpers

def t(a):
    return torch.from_numpy(np.ascontiguousarray(a, dtype=np.float32))


def conv(k):
    """Conv1D/2D/3D kernel (*spatial, in, out) -> (out, in, *spatial)."""
    n = k.ndim
    return t(k.transpose(n - 1, n - 2, *range(n - 2)))


def conv_t(k):
    """Conv*Transpose kernel (*spatial, out, in) -> ConvTranspose weight (in, out, *spatial)."""
    n = k.ndim
    return t(k.transpose(n - 1, n - 2, *range(n - 2)))


def depthwise(k):
    """DepthwiseConv2D kernel (kh, kw, C, M) -> (C*M, 1, kh, kw); output channel c*M + j."""
    kh, kw, c, m = k.shape
    return t(k.transpose(2, 3, 0, 1).reshape(c * m, 1, kh, kw))


def dense(k):
    return t(k.T)


def dense_from_flatten(k, spatial_and_c):
    """Dense after Keras' Flatten of a (*spatial, C) map, for a torch Linear after flatten(1) of
    (C, *spatial)."""
    *sp, c = spatial_and_c
    out = k.shape[1]
    w = k.T.reshape(out, *sp, c)
    return t(w.transpose(0, len(sp) + 1, *range(1, len(sp) + 1)).reshape(out, -1))


def bn(prefix, w, torch_eps):
    gamma, beta, mean, var = w
    return {f"{prefix}.weight": t(gamma), f"{prefix}.bias": t(beta), f"{prefix}.running_mean": t(mean),
            f"{prefix}.running_var": t(var + KERAS_EPS - torch_eps),
            f"{prefix}.num_batches_tracked": torch.tensor(0)}


def conv_layer(prefix, w, fn=conv):
    d = {f"{prefix}.weight": fn(w[0])}
    if len(w) > 1:
        d[f"{prefix}.bias"] = t(w[1])
    return d


def dense_layer(prefix, w, flatten=None):
    return {f"{prefix}.weight": dense(w[0]) if flatten is None else dense_from_flatten(w[0], flatten),
            f"{prefix}.bias": t(w[1])}


def prelu(prefix, w):
    return {f"{prefix}.weight": t(w[0].reshape(-1))}


def lstm(prefix, w):
    kernel, recurrent, bias = w  # gates i, f, c, o in both frameworks
    return {f"{prefix}.weight_ih_l0": dense(kernel), f"{prefix}.weight_hh_l0": dense(recurrent),
            f"{prefix}.bias_ih_l0": t(bias), f"{prefix}.bias_hh_l0": t(np.zeros_like(bias))}


def gru(prefix, w):
    kernel, recurrent, bias = w  # Keras gates z, r, h; torch r, z, n; reset_after: bias [2, 3u]

    def reorder(a):  # along the last axis
        z, r, h = np.split(a, 3, axis=-1)
        return np.concatenate([r, z, h], axis=-1)

    return {f"{prefix}.weight_ih_l0": dense(reorder(kernel)), f"{prefix}.weight_hh_l0": dense(reorder(recurrent)),
            f"{prefix}.bias_ih_l0": t(reorder(bias[0])), f"{prefix}.bias_hh_l0": t(reorder(bias[1]))}


def norm(prefix, w):
    return {f"{prefix}.weight": t(w[0]), f"{prefix}.bias": t(w[1])}


# ----------------------------------------------------------------------------- one function per twin
# L: Keras layer name -> its weights (numpy, in layer.weights order)

def MobileNetTwoModules(L):
    dw_k, pw_k, sep_b = L["separable_conv2d"]
    return {**conv_layer("stem.0", L["conv_stem"]), **bn("stem.1", L["stem_bn"], 1e-3),
            **conv_layer("expand.0", L["dw1"], depthwise), **bn("expand.1", L["batch_normalization"], 1e-3),
            "sep_dw.weight": depthwise(dw_k), "sep_pw.weight": conv(pw_k), "sep_pw.bias": t(sep_b),
            **dense_layer("head", L["logits"])}


def MobileNetSeparable(L):
    dw_k, pw_k, sep_b = L["separable_conv2d"]
    return {**conv_layer("features.0", L["conv_stem"]), **bn("features.1", L["stem_bn"], 1e-5),
            **conv_layer("features.3", L["dw1"], depthwise), **bn("features.4", L["batch_normalization"], 1e-5),
            "features.6.depthwise.weight": depthwise(dw_k), "features.6.pointwise.weight": conv(pw_k),
            "features.6.pointwise.bias": t(sep_b), **dense_layer("head", L["logits"])}


def UNetTwin(L):
    return {**conv_layer("down", L["enc_conv"]), **conv_layer("bottom", L["conv2d"]),
            **conv_layer("up", L["upsample"], conv_t), **norm("mix", L["gn"]), **conv_layer("proj", L["seg_out"])}


def _vgg(L, flatten):
    return {**conv_layer("features.0", L["block1_conv"]), **conv_layer("features.3", L["conv2d"]),
            **dense_layer("classifier.0", L["fc1"], flatten), **dense_layer("classifier.2", L["predictions"])}


def ResNetTwin(L):
    e = 1e-5
    return {**conv_layer("stem.0", L["conv1"]), **bn("stem.1", L["bn_conv1"], e),
            **conv_layer("blocks.0.conv_a", L["res2a_branch2a"]), **bn("blocks.0.bn_a", L["bn2a_branch2a"], e),
            **conv_layer("blocks.0.conv_b", L["res2a_branch2b"]), **bn("blocks.0.bn_b", L["bn2a_branch2b"], e),
            **conv_layer("blocks.1.conv_a", L["conv2d"]), **bn("blocks.1.bn_a", L["batch_normalization"], e),
            **conv_layer("blocks.1.conv_b", L["conv2d_1"]), **bn("blocks.1.bn_b", L["batch_normalization_1"], e),
            **conv_layer("blocks.1.shortcut.0", L["res3a_branch1"]), **bn("blocks.1.shortcut.1", L["bn3a_branch1"], e),
            **dense_layer("head", L["fc1000"])}


def Conv1DTwin(L):
    return {**conv_layer("encoder", L["conv1d"]), **conv_layer("expand", L["up1d"], conv_t),
            **dense_layer("head", L["dense"], flatten=(32, 6))}


def Conv3DTwin(L):
    return {**conv_layer("body.0", L["vol_conv"]), **bn("body.1", L["batch_normalization"], 1e-3),
            **conv_layer("body.3", L["conv3d_transpose"], conv_t), **dense_layer("head", L["vol_out"])}


def PReLUNetTwin(L):
    return {**conv_layer("body.0", L["conv1"]), **prelu("body.1", L["prelu1"]),
            **conv_layer("body.3", L["conv2"]), **prelu("body.4", L["prelu2"]),
            **dense_layer("fc", L["conv3"], flatten=(3, 3, 12)), **prelu("act", L["prelu3"]),
            **dense_layer("cls", L["conv4-1"]), **dense_layer("box", L["conv4-2"])}


def PReLUNetPermuteTwin(L):
    return {**conv_layer("feat1", L["conv1"]), **prelu("act1", L["prelu1"]),
            **conv_layer("feat2", L["conv2"]), **prelu("act2", L["prelu2"]),
            **dense_layer("dense", L["conv3"]), **prelu("act3", L["prelu3"]),
            **dense_layer("head_prob", L["conv4-1"]), **dense_layer("head_box", L["conv4-2"])}


def RNNTwin(L):
    return {"tokens.weight": t(L["embedding"][0]), **lstm("enc", L["encoder_lstm"]),
            **norm("ln", L["layer_normalization"]), **gru("dec", L["gru"]),
            **dense_layer("head", L["classifier_dense"])}


def SubclassedTwin(L):
    return {**conv_layer("features.0", L["conv2d"]), **bn("features.1", L["batch_normalization"], 1e-3),
            **conv_layer("features.3", L["conv2d_1"]), **dense_layer("classifier", L["dense"])}


def VGGTwin_for(keras_name):
    # vgg: Keras flattens (H, W, C) = (3, 4, 8); vgg_permute: Keras flattens (C, H, W) like torch
    return lambda L: _vgg(L, (3, 4, 8) if keras_name == "vgg" else None)


# The oracle can fail: conversions a careless converter makes, each of which must miss by far more
# than TOL (else the zoo would not test that step).
WRONG = {
    ("vgg", "VGGTwin"): ("Flatten -> Dense without the NHWC -> NCHW reorder", lambda L: _vgg(L, None)),
    ("vgg_permute", "VGGTwin"): ("reorder applied although Keras permuted first", lambda L: _vgg(L, (3, 4, 8))),
    ("conv1d", "Conv1DTwin"): ("Flatten -> Dense (1D) without the reorder",
                               lambda L: {**Conv1DTwin(L), **dense_layer("head", L["dense"])}),
    ("prelu", "PReLUNetTwin"): ("no reorder", lambda L: {**PReLUNetTwin(L), **dense_layer("fc", L["conv3"])}),
    ("prelu", "PReLUNetPermuteTwin"): ("reorder although the twin permutes to NHWC",
                                       lambda L: {**PReLUNetPermuteTwin(L),
                                                  **dense_layer("dense", L["conv3"], flatten=(3, 3, 12))}),
    ("resnet", "ResNetTwin"): ("BatchNorm eps difference not folded",
                               lambda L: {**ResNetTwin(L), **bn("stem.1", L["bn_conv1"], 1e-3)}),
    ("mobilenet", "MobileNetSeparable"): ("BatchNorm eps not folded",
                                          lambda L: {**MobileNetSeparable(L), **bn("features.1", L["stem_bn"], 1e-3)}),
    ("mobilenet", "MobileNetTwoModules"): ("depthwise kernel (3, 3, 8, 2) read as Conv2D-like (C, M) -> (M, C) order",
                                           lambda L: {**MobileNetTwoModules(L), "expand.0.weight": t(
                                               L["dw1"][0].transpose(3, 2, 0, 1).reshape(16, 1, 3, 3))}),
    ("unet", "UNetTwin"): ("Conv2DTranspose with the spatial axes flipped (as Flax needs)",
                           lambda L: {**UNetTwin(L), "up.weight": conv_t(L["upsample"][0][::-1, ::-1])}),
    ("conv3d", "Conv3DTwin"): ("Conv3DTranspose (4 -> 4) read as DHWIO: in and out swapped",
                               lambda L: {**Conv3DTwin(L), "body.3.weight": t(
                                   L["conv3d_transpose"][0].transpose(3, 4, 0, 1, 2))}),
    ("rnn", "RNNTwin"): ("GRU gates kept in Keras order (z, r, h)",
                         lambda L: {**RNNTwin(L), "dec.weight_ih_l0": dense(L["gru"][0]),
                                    "dec.weight_hh_l0": dense(L["gru"][1]), "dec.bias_ih_l0": t(L["gru"][2][0]),
                                    "dec.bias_hh_l0": t(L["gru"][2][1])}),
    ("subclassed", "SubclassedTwin"): ("BatchNorm gamma and beta swapped",
                                       lambda L: {**SubclassedTwin(L), **bn("features.1", [
                                           L["batch_normalization"][1], L["batch_normalization"][0],
                                           *L["batch_normalization"][2:]], 1e-3)}),
}


def converter(keras_name, twin_name):
    return VGGTwin_for(keras_name) if twin_name == "VGGTwin" else globals()[twin_name]


# ----------------------------------------------------------------------------- running it

def keras_model(name, zoo: Path):
    mk.keras.backend.clear_session()
    model, _, _ = mk.MODELS[name]()
    model.load_weights(str(zoo / f"{name}.weights.h5"))
    return model


def main(argv):
    zoo = Path(argv[1] if len(argv) > 1 else ROOT / "tests/data/zoo")
    worst = 0.0
    for name, twins in zoo_twins.ZOO.items():
        model = keras_model(name, zoo)
        io = np.load(zoo / f"{name}_io.npz")
        ys = [io[k] for k in sorted(io.files) if k.startswith("y")]
        out = model(io["x"], training=False)
        outs = [np.asarray(o) for o in (out if isinstance(out, (list, tuple)) else [out])]
        keras_err = max(float(np.abs(a - b).max()) for a, b in zip(outs, ys))
        for saved in (zoo / f"{name}.keras", zoo / f"{name}_legacy.h5"):  # Keras reads its own files back
            if saved.exists():
                re_out = mk.keras.saving.load_model(str(saved))(io["x"], training=False)
                re_outs = [np.asarray(o) for o in (re_out if isinstance(re_out, (list, tuple)) else [re_out])]
                keras_err = max([keras_err] + [float(np.abs(a - b).max()) for a, b in zip(re_outs, ys)])
        L = {layer.name: [np.asarray(w.numpy()) for w in layer.weights] for layer in model.layers}
        for twin_name, in_perm, out_perm in twins:
            twin = getattr(zoo_twins, twin_name)()
            sd = converter(name, twin_name)(L)
            twin.load_state_dict(sd, strict=True)
            got = zoo_twins.run_twin(twin, io["x"], in_perm, out_perm)
            err = max(float(np.abs(g.numpy() - y).max()) for g, y in zip(got, ys))
            line = f"{name:12s} {twin_name:20s} max abs err {err:.2e} (Keras from its files vs stored {keras_err:.1e})"
            if (name, twin_name) in WRONG:
                why, wrong = WRONG[name, twin_name]
                twin.load_state_dict(wrong(L), strict=True)
                miss = max(float(np.abs(g.numpy() - y).max())
                           for g, y in zip(zoo_twins.run_twin(twin, io["x"], in_perm, out_perm), ys))
                line += f"; {why}: {miss:.2e}"
                if miss <= 100 * TOL:
                    err = float("inf")  # the zoo would not catch this mistake
            worst = max(worst, err, keras_err)
            print(line + ("" if err <= TOL else "   FAIL"))
    print(f"worst {worst:.2e}")
    return 0 if worst <= TOL else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))

"""The second Keras zoo (tests/data/zoo2): 25 more tiny models built to find what the first zoo
missed (channels_first, Permute behind Dropout, Reshape as Flatten, grouped convs, depthwise x3,
SeparableConv1D, BN center/scale=False, nested models, Inception branches, sorted TF1 names,
stacked LSTMs, refused layers: GRU reset_after=False, Bidirectional, per-position PReLU, Dense on a
map). Each is saved in the six formats by make_keras_zoo.write_model, and each twin in
tests/zoo2_twins.py is checked against Keras by a hand conversion (zoo_oracle's helpers).

Run in a throwaway venv with tensorflow-cpu, keras and torch (never a ckptfix dependency):
    python tools/make_keras_zoo2.py tests/data/zoo2 [NAME ...]
"""
import sys, os
from pathlib import Path as _P
_ROOT = _P(__file__).resolve().parent.parent
sys.path[:0] = [str(_ROOT / "tools"), str(_ROOT / "tests")]
import make_keras_zoo as mk
import zoo_oracle as zo
from zoo_oracle import t, conv, depthwise, dense, dense_from_flatten, bn, conv_layer, dense_layer, lstm, gru, norm
import keras, numpy as np, torch
from keras import layers as L_
from pathlib import Path
import zoo2_twins as twins

def nested():
    def block(nm):
        i = keras.Input((8, 8, 8))
        x = L_.Conv2D(8, 3, padding="same", use_bias=False)(i)
        x = L_.BatchNormalization()(x)
        x = L_.ReLU()(x)
        return keras.Model(i, x, name=nm)
    i = keras.Input((8, 8, 3))
    x = L_.Conv2D(8, 3, padding="same", activation="relu", name="entry")(i)
    x = block("inner_one")(x)
    x = block("inner_two")(x)
    x = L_.GlobalAveragePooling2D()(x)
    return keras.Model(i, L_.Dense(5, name="logits")(x), name="nested"), (8, 8, 3), "float"

def dense_seq():
    m = keras.Sequential([keras.Input((6,)), L_.Dense(8, activation="relu"), L_.Dense(8, activation="relu"),
                          L_.Dense(8, activation="relu"), L_.Dense(3)], name="dense_seq")
    return m, (6,), "float"

def groups():
    i = keras.Input((8, 8, 4))
    x = L_.Conv2D(8, 3, padding="same", groups=2)(i)
    x = L_.BatchNormalization()(x); x = L_.ReLU()(x)
    x = L_.Conv2D(8, 3, padding="same", groups=4, use_bias=False, activation="relu")(x)
    x = L_.GlobalAveragePooling2D()(x)
    return keras.Model(i, L_.Dense(3)(x), name="groups"), (8, 8, 4), "float"

def dw3():
    i = keras.Input((8, 8, 4))
    x = L_.DepthwiseConv2D(3, padding="same", depth_multiplier=3)(i)
    x = L_.BatchNormalization()(x); x = L_.ReLU()(x)
    x = L_.Conv2D(6, 1, activation="relu")(x)
    x = L_.GlobalAveragePooling2D()(x)
    return keras.Model(i, L_.Dense(3)(x), name="dw3"), (8, 8, 4), "float"

def sep1d():
    i = keras.Input((16, 4))
    x = L_.SeparableConv1D(6, 3, padding="same", depth_multiplier=2, activation="relu")(i)
    x = L_.GlobalAveragePooling1D()(x)
    return keras.Model(i, L_.Dense(3)(x), name="sep1d"), (16, 4), "float"

def bncs():
    i = keras.Input((8, 8, 3))
    x = L_.Conv2D(8, 3, padding="same", use_bias=False)(i)
    x = L_.BatchNormalization(center=False)(x); x = L_.ReLU()(x)
    x = L_.Conv2D(8, 3, padding="same", use_bias=False)(x)
    x = L_.BatchNormalization(scale=False)(x); x = L_.ReLU()(x)
    x = L_.GlobalAveragePooling2D()(x)
    return keras.Model(i, L_.Dense(3)(x), name="bncs"), (8, 8, 3), "float"

def inception():
    i = keras.Input((8, 8, 4))
    # creation order: b3 first, then b1, then b2
    b3r = L_.Conv2D(4, 1, activation="relu", name="br3_reduce")
    b3b = L_.Conv2D(4, 3, padding="same", activation="relu", name="br3_conv")
    b1 = L_.Conv2D(4, 1, activation="relu", name="br1_conv")
    b2r = L_.Conv2D(4, 1, activation="relu", name="br2_reduce")
    b2b = L_.Conv2D(4, 3, padding="same", activation="relu", name="br2_conv")
    # calls: b1, b2, b3 (topological order b1, b2, b3)
    y1 = b1(i); y2 = b2b(b2r(i)); y3 = b3b(b3r(i))
    x = L_.Concatenate()([y3, y1, y2])
    x = L_.GlobalAveragePooling2D()(x)
    return keras.Model(i, L_.Dense(3, name="head_dense")(x), name="inception"), (8, 8, 4), "float"

def flat1d():
    i = keras.Input((10, 4))
    x = L_.Conv1D(6, 3, activation="relu")(i)
    x = L_.Flatten()(x)
    return keras.Model(i, L_.Dense(3)(x), name="flat1d"), (10, 4), "float"

def _small(name, mid):
    i = keras.Input((6, 8, 3))
    x = L_.Conv2D(4, 3, padding="same", activation="relu")(i)
    x = L_.MaxPooling2D()(x)
    x = mid(x)
    return keras.Model(i, L_.Dense(5)(x), name=name), (6, 8, 3), "float"

def vsmall():
    return _small("vsmall", lambda x: L_.Flatten()(x))

def dropflat():
    return _small("dropflat", lambda x: L_.Dropout(0.5)(L_.Flatten()(x)))

def permhw():
    return _small("permhw", lambda x: L_.Flatten()(L_.Permute((2, 1, 3))(x)))

def reshapeflat():
    return _small("reshapeflat", lambda x: L_.Reshape((48,))(x))

def lstm2():
    i = keras.Input((7, 5))
    x = L_.LSTM(8, return_sequences=True)(i)
    x = L_.LSTM(8)(x)
    return keras.Model(i, L_.Dense(3)(x), name="lstm2"), (7, 5), "float"

def gru_ra0():
    i = keras.Input((7, 5))
    x = L_.GRU(6, reset_after=False)(i)
    return keras.Model(i, L_.Dense(3)(x), name="gru_ra0"), (7, 5), "float"

def bilstm():
    i = keras.Input((7, 5))
    x = L_.Bidirectional(L_.LSTM(6))(i)
    return keras.Model(i, L_.Dense(3)(x), name="bilstm"), (7, 5), "float"

def emb():
    i = keras.Input((7,), dtype="int32")
    x = L_.Embedding(30, 6)(i)
    x = L_.GlobalAveragePooling1D()(x)
    x = L_.Dense(4, use_bias=False, activation="relu")(x)
    return keras.Model(i, L_.Dense(3)(x), name="emb"), (7,), "int"

def prelu_map():
    i = keras.Input((6, 6, 3))
    x = L_.Conv2D(4, 3, padding="same")(i)
    x = L_.PReLU()(x)
    x = L_.GlobalAveragePooling2D()(x)
    return keras.Model(i, L_.Dense(3)(x), name="prelu_map"), (6, 6, 3), "float"

def lnconv():
    i = keras.Input((6, 6, 3))
    x = L_.Conv2D(6, 3, padding="same")(i)
    x = L_.LayerNormalization()(x); x = L_.ReLU()(x)
    x = L_.GlobalAveragePooling2D()(x)
    return keras.Model(i, L_.Dense(3)(x), name="lnconv"), (6, 6, 3), "float"

def repeat12():
    i = keras.Input((4,))
    x = i
    for _ in range(12):
        x = L_.Dense(4, activation="tanh")(x)
    return keras.Model(i, L_.Dense(2)(x), name="repeat12"), (4,), "float"

def chfirst():
    i = keras.Input((3, 6, 8))
    x = L_.Conv2D(4, 3, padding="same", activation="relu", data_format="channels_first")(i)
    x = L_.Flatten()(x)
    return keras.Model(i, L_.Dense(5)(x), name="chfirst"), (3, 6, 8), "float"

def densemap():
    i = keras.Input((6, 6, 3))
    x = L_.Conv2D(4, 3, padding="same", activation="relu")(i)
    x = L_.Dense(6, activation="relu")(x)
    x = L_.GlobalAveragePooling2D()(x)
    return keras.Model(i, L_.Dense(3)(x), name="densemap"), (6, 6, 3), "float"

NHWC = (0, 3, 1, 2); NWC = (0, 2, 1)
CASES = {  # name: (builder, [(twin, in_perm, oracle or None)])
 "nested": (nested, [("NestedTwin", NHWC, lambda L: {**conv_layer("stem", L["entry"]),
      **conv_layer("blocks.0.0", L["conv2d"]), **bn("blocks.0.1", L["batch_normalization"], 1e-3),
      **conv_layer("blocks.1.0", L["conv2d_1"]), **bn("blocks.1.1", L["batch_normalization_1"], 1e-3),
      **dense_layer("top", L["logits"])})]),
 "dense_seq": (dense_seq, [("DenseSeqTwin", None, lambda L: {**dense_layer("mlp.0", L["dense"]),
      **dense_layer("mlp.2", L["dense_1"]), **dense_layer("mlp.4", L["dense_2"]), **dense_layer("mlp.6", L["dense_3"])})]),
 "groups": (groups, [("GroupsTwin", NHWC, lambda L: {**conv_layer("a", L["conv2d"]), **bn("n", L["batch_normalization"], 1e-3),
      **conv_layer("b", L["conv2d_1"]), **dense_layer("o", L["dense"])})]),
 "dw3": (dw3, [("DW3Twin", NHWC, lambda L: {**conv_layer("d", L["depthwise_conv2d"], depthwise),
      **bn("n", L["batch_normalization"], 1e-3), **conv_layer("p", L["conv2d"]), **dense_layer("o", L["dense"])})]),
 "sep1d": (sep1d, [("Sep1DTwin", NWC, lambda L: {
      "dw.weight": t(L["separable_conv1d"][0].transpose(1, 2, 0).reshape(8, 1, 3)),
      "pw.weight": conv(L["separable_conv1d"][1]), "pw.bias": t(L["separable_conv1d"][2]), **dense_layer("o", L["dense"])})]),
 "bncs": (bncs, [("BNcsTwin", NHWC, lambda L: {**conv_layer("c1", L["conv2d"]), **conv_layer("c2", L["conv2d_1"]),
      "n1.weight": t(L["batch_normalization"][0]), "n1.bias": torch.zeros(8), "n1.running_mean": t(L["batch_normalization"][1]),
      "n1.running_var": t(L["batch_normalization"][2]), "n1.num_batches_tracked": torch.tensor(0),
      "n2.weight": torch.ones(8), "n2.bias": t(L["batch_normalization_1"][0]), "n2.running_mean": t(L["batch_normalization_1"][1]),
      "n2.running_var": t(L["batch_normalization_1"][2]), "n2.num_batches_tracked": torch.tensor(0),
      **dense_layer("o", L["dense"])})]),
 "inception": (inception, [("InceptionTwin", NHWC, lambda L: {**conv_layer("p_one", L["br1_conv"]),
      **conv_layer("q_red", L["br2_reduce"]), **conv_layer("q_big", L["br2_conv"]), **conv_layer("r_red", L["br3_reduce"]),
      **conv_layer("r_big", L["br3_conv"]), **dense_layer("o", L["head_dense"])})]),
 "flat1d": (flat1d, [("Flat1DTwin", NWC, lambda L: {**conv_layer("c", L["conv1d"]), **dense_layer("o", L["dense"], flatten=(8, 6))})]),
 "vsmall": (vsmall, [(tw, NHWC, (lambda f: lambda L: {**conv_layer("c", L["conv2d"]), **dense_layer("o", L["dense"], flatten=f)})(f))
                     for tw, f in (("ViewTwin", (3, 4, 4)), ("FlatModTwin", (3, 4, 4)), ("PermReshapeTwin", None))]),
 "dropflat": (dropflat, [("DropFlatTwin", NHWC, lambda L: {**conv_layer("c", L["conv2d"]), **dense_layer("o", L["dense"], flatten=(3, 4, 4))})]),
 "reshapeflat": (reshapeflat, [("DropFlatTwin", NHWC, lambda L: {**conv_layer("c", L["conv2d"]), **dense_layer("o", L["dense"], flatten=(3, 4, 4))})]),
 "permhw": (permhw, [("PermHWTwin", NHWC, lambda L: {**conv_layer("c", L["conv2d"]), "o.bias": t(L["dense"][1]),
      "o.weight": t(L["dense"][0].T.reshape(5, 4, 3, 4).transpose(0, 3, 2, 1).reshape(5, -1))})]),
 "lstm2": (lstm2, [("LSTM2Twin", None, lambda L: {**{k.replace("l0", "l1"): v for k, v in lstm("rec", L["lstm_1"]).items()},
                                                   **lstm("rec", L["lstm"]), **dense_layer("o", L["dense"])}),
                   ("LSTM2SepTwin", None, lambda L: {**lstm("r1", L["lstm"]), **lstm("r2", L["lstm_1"]), **dense_layer("o", L["dense"])})]),
 "gru_ra0": (gru_ra0, [("GRUTwin", None, None)]),
 "bilstm": (bilstm, [("BiLSTMTwin", None, lambda L: {**lstm("rec", L["bidirectional"][:3]),
      **{k + "_reverse": v for k, v in lstm("rec", L["bidirectional"][3:]).items()}, **dense_layer("o", L["dense"])})]),
 "emb": (emb, [("EmbTwin", None, lambda L: {"tok.weight": t(L["embedding"][0]), "mid.weight": dense(L["dense"][0]),
      **dense_layer("o", L["dense_1"])})]),
 "prelu_map": (prelu_map, [("PReLUMapTwin", NHWC, None)]),
 "lnconv": (lnconv, [("LNConvTwin", NHWC, lambda L: {**conv_layer("c", L["conv2d"]), **norm("ln", L["layer_normalization"]),
      **dense_layer("o", L["dense"])})]),
 "repeat12": (repeat12, [("Repeat12Twin", None, lambda L: {**{k: v for j in range(12) for k, v in
      dense_layer(f"stack.{j}", L["dense" + (f"_{j}" if j else "")]).items()}, **dense_layer("o", L["dense_12"])})]),
 "chfirst": (chfirst, [("ChFirstTwin", None, lambda L: {**conv_layer("c", L["conv2d"]), **dense_layer("o", L["dense"])})]),
 "densemap": (densemap, [("DenseMapTwin", NHWC, lambda L: {**conv_layer("c", L["conv2d"]),
      "pix.weight": dense(L["dense"][0])[:, :, None, None].contiguous(), "pix.bias": t(L["dense"][1]), **dense_layer("o", L["dense_1"])})]),
}

def permdrop():
    return _small("permdrop", lambda x: L_.Dropout(0.5)(L_.Flatten()(L_.Permute((3, 1, 2))(x))))

def permreshape():
    return _small("permreshape", lambda x: L_.Reshape((48,))(L_.Permute((3, 1, 2))(x)))

def alpha_order():
    i = keras.Input((8,))
    x = i
    for nm in ("zulu", "yankee", "xray", "whiskey"):
        x = L_.Dense(8, activation="tanh", name=nm)(x)
    return keras.Model(i, x, name="alpha_order"), (8,), "float"

CASES.update({
 "permdrop": (permdrop, [("DropFlatTwin", NHWC, lambda L: {**conv_layer("c", L["conv2d"]), **dense_layer("o", L["dense"])})]),
 "permreshape": (permreshape, [("DropFlatTwin", NHWC, lambda L: {**conv_layer("c", L["conv2d"]), **dense_layer("o", L["dense"])})]),
 "alpha_order": (alpha_order, [("ChainTwin", None, lambda L: {k: v for j, nm in enumerate(("zulu", "yankee", "xray", "whiskey"))
                                                           for k, v in dense_layer(f"chain.{j}", L[nm]).items()})]),
})

def chfirst2():
    i = keras.Input((4, 5, 4))
    x = L_.Conv2D(6, 3, padding="same", activation="relu", data_format="channels_first")(i)
    x = L_.Flatten()(x)
    return keras.Model(i, L_.Dense(5)(x), name="chfirst2"), (4, 5, 4), "float"
CASES["chfirst2"] = (chfirst2, [("ChFirst2Twin", None, lambda L: {**conv_layer("c", L["conv2d"]), **dense_layer("o", L["dense"])})])

def all_layers(m):
    out = {}
    for l in m.layers:
        if isinstance(l, keras.Model):
            out.update(all_layers(l))
        else:
            out[l.name] = [w.numpy() for w in l.weights]
    return out

def main(out, names):
    root = Path(out); root.mkdir(parents=True, exist_ok=True)
    for name in names:
        d = root / name
        if d.exists():
            import shutil; shutil.rmtree(d)
        d.mkdir()
        mk.MODELS[name] = CASES[name][0]
        mk.write_model(name, d)
        keras.backend.clear_session(); keras.utils.set_random_seed(mk.SEED)
        m, _, _ = CASES[name][0]()
        m.load_weights(str(d / f"{name}.weights.h5"))
        io = np.load(d / f"{name}_io.npz")
        yk = np.asarray(m(io["x"], training=False))
        print("  keras reload err", float(np.abs(yk - io["y"]).max()))
        L = all_layers(m)
        for tw, perm, oracle in CASES[name][1]:
            if oracle is None:
                print("  ", tw, "no oracle (expected refusal)"); continue
            mod = getattr(twins, tw)()
            mod.load_state_dict(oracle(L), strict=True); mod.eval()
            x = torch.from_numpy(io["x"]); x = x.long() if not x.is_floating_point() else x
            if perm: x = x.permute(*perm).contiguous()
            with torch.no_grad(): y = mod(x).numpy()
            print("  oracle", tw, float(np.abs(y - io["y"]).max()))

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2:] or list(CASES))

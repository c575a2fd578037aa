"""BERT encoders against HF transformers' BertModel (float32, CPU).

Re-initialised fixtures (every parameter drawn so that it matters: N(0, 1/fan_in) matrices,
biases and LayerNorm weights away from their defaults) in the layouts found on disk: a plain
BertModel, a BertForMaskedLM (tensors under "bert.", with MLM head tensors the engine reads
past), an old-style file that still holds the int64 position_ids buffer, and the tanh GELU.
The engine's final hidden states must equal HF's last_hidden_state within 1e-5 of the largest
value; the layer-streamed forward gives the same bytes as the resident one.
"""
import json
import os

import numpy as np
import pytest

from conftest import require, run_cli

PROMPTS = [[2, 17, 5, 88, 30, 45, 9, 3], [2, 60, 12, 99, 41, 41, 7, 50, 3], [2, 64, 3]]

VARIANTS = {
    "bert_model": dict(cls="BertModel"),
    "bert_mlm": dict(cls="BertForMaskedLM"),
    "bert_position_ids": dict(cls="BertModel", keep_position_ids=True),
    "bert_gelu_new": dict(cls="BertModel", hidden_act="gelu_new"),
}


def build(name, out_dir, seed=0):
    torch = require("torch")
    transformers = require("transformers")
    from safetensors.torch import save_file
    v = VARIANTS[name]
    cfg = transformers.BertConfig(vocab_size=101, hidden_size=32, num_hidden_layers=3, num_attention_heads=4,
                                  intermediate_size=64, max_position_embeddings=24, type_vocab_size=2,
                                  hidden_act=v.get("hidden_act", "gelu"), layer_norm_eps=1e-12)
    torch.manual_seed(seed)
    model = getattr(transformers, v["cls"])(cfg).eval()
    with torch.no_grad():
        for n, p in model.named_parameters():
            if p.dim() == 2:
                p.normal_(0, 1 / np.sqrt(p.shape[1]) if "embeddings" not in n else 1.0)
            elif "LayerNorm.weight" in n:
                p.uniform_(0.5, 1.5)
            else:
                p.normal_(0, 0.1)
    model.save_pretrained(out_dir)
    if v.get("keep_position_ids"):  # checkpoints saved by transformers < 4.31 keep the buffer
        from safetensors.torch import load_file
        t = load_file(os.path.join(out_dir, "model.safetensors"))
        t["embeddings.position_ids"] = torch.arange(cfg.max_position_embeddings).unsqueeze(0)
        save_file(t, os.path.join(out_dir, "model.safetensors"), metadata={"format": "pt"})
    return model


def reference(model, prompts=PROMPTS):
    torch = require("torch")
    base = model.bert if hasattr(model, "bert") else model
    with torch.no_grad():
        return [base(torch.tensor([p])).last_hidden_state[0].numpy() for p in prompts]


def trace(cli, ckpt, out, *extra, prompts=PROMPTS):
    args = ["trace", ckpt, "--out", out, "--save-hidden", *extra]
    for p in prompts:
        args += ["--token-ids", ",".join(map(str, p))]
    return run_cli(cli, *args)


@pytest.mark.parametrize("name", list(VARIANTS))
def test_bert_hidden_states_match_hf(cli, tmp_path, name):
    h5py = require("h5py")
    ckpt = str(tmp_path / name)
    model = build(name, ckpt)
    info = json.loads(run_cli(cli, "info", ckpt, "--json").stdout)
    assert info["model_type"] == "bert" and info["num_layers"] == 3
    # gelu_new as transformers' NewGELUActivation evaluates it, op by op (not torch's fused tanh GELU)
    assert info["ffn_activation"] == VARIANTS[name].get("hidden_act", "gelu")
    out = str(tmp_path / "s.h5")
    trace(cli, ckpt, out, "--run", "r")
    ref = np.concatenate(reference(model))
    with h5py.File(out, "r") as f:
        run = f["runs/r"]
        got = run["hidden_states"][:]
        assert got.shape == ref.shape == (sum(map(len, PROMPTS)), 32)
        assert np.abs(got - ref).max() <= 1e-5 * np.abs(ref).max(), np.abs(got - ref).max()
        np.testing.assert_array_equal(run["prompt_offsets"][:], np.cumsum([0] + [len(p) for p in PROMPTS]))
        assert "layers" not in run or len(run["layers"]) == 0  # a dense encoder has no routers


def test_bert_layer_streamed_identical(cli, tmp_path):
    h5py = require("h5py")
    ckpt = str(tmp_path / "b")
    build("bert_mlm", ckpt)
    out = str(tmp_path / "s.h5")
    trace(cli, ckpt, out, "--layer-streaming", "off", "--run", "resident")
    trace(cli, ckpt, out, "--layer-streaming", "on", "--run", "streamed")
    with h5py.File(out, "r") as f:
        np.testing.assert_array_equal(f["runs/resident/hidden_states"][:], f["runs/streamed/hidden_states"][:])


def test_bert_bad_inputs(cli, tmp_path):
    ckpt = str(tmp_path / "b")
    build("bert_model", ckpt)
    out = str(tmp_path / "s.h5")
    # no language-model head: --save-logits is refused, naming what to use instead
    r = run_cli(cli, "trace", ckpt, "--out", out, "--save-logits", "--token-ids", "2,3", check=False)
    assert r.returncode != 0 and "hidden states" in r.stderr and "logits" in r.stderr
    # more tokens than learned positions
    r = run_cli(cli, "trace", ckpt, "--out", out, "--token-ids", ",".join(["5"] * 25), check=False)
    assert r.returncode != 0 and "max_position_embeddings" in r.stderr and "25 tokens" in r.stderr
    cfg_path = os.path.join(ckpt, "config.json")
    good = json.load(open(cfg_path))
    for key, value, words in [("position_embedding_type", "relative_key", "relative_key"),
                              ("hidden_act", "relu", "relu"), ("is_decoder", True, "encoders only")]:
        json.dump({**good, key: value}, open(cfg_path, "w"))
        r = run_cli(cli, "info", ckpt, check=False)
        assert r.returncode != 0 and key in r.stderr and words in r.stderr and "config.json" in r.stderr, r.stderr
    cfg = dict(good)
    del cfg["intermediate_size"]
    json.dump(cfg, open(cfg_path, "w"))
    r = run_cli(cli, "info", ckpt, check=False)
    assert r.returncode != 0 and "intermediate_size" in r.stderr
    json.dump(good, open(cfg_path, "w"))
    # a tensor the adapter does not know is still refused
    from safetensors.torch import load_file, save_file
    t = load_file(os.path.join(ckpt, "model.safetensors"))
    t["encoder.layer.0.surprise.weight"] = t["embeddings.LayerNorm.weight"].clone()
    save_file(t, os.path.join(ckpt, "model.safetensors"))
    r = run_cli(cli, "info", ckpt, check=False)
    assert r.returncode != 0 and "encoder.layer.0.surprise.weight" in r.stderr


def test_bert_sessions_are_checked_on_open(cli, tmp_path):
    """A BERT session's hidden states must be [T, d]; attention-router records are refused in a
    model without a mixture of attention heads. Both name the file and the dataset."""
    h5py = require("h5py")
    ckpt = str(tmp_path / "b")
    build("bert_model", ckpt)
    good = str(tmp_path / "s.h5")
    trace(cli, ckpt, good, "--run", "r")
    assert json.loads(run_cli(cli, "session", good, "--json").stdout)["runs"][0]["hidden_states"]
    import shutil
    for name, damage, path in [
            ("wide", lambda f: (f["runs/r"].__delitem__("hidden_states"),
                                f["runs/r"].create_dataset("hidden_states", data=np.zeros((24, 33), np.float32))),
             "/runs/r/hidden_states"),
            ("attention", lambda f: [f.create_dataset(f"runs/r/layers/0/attention/{n}", data=np.zeros(s, t))
                                     for n, s, t in (("router_logits", (24, 2), np.float32),
                                                     ("topk_experts", (24, 1), np.int32),
                                                     ("topk_weights", (24, 1), np.float32))],
             "/runs/r/layers/0/attention")]:
        bad = str(tmp_path / f"{name}.h5")
        shutil.copy(good, bad)
        with h5py.File(bad, "r+") as f:
            damage(f)
        r = run_cli(cli, "session", bad, check=False)
        assert r.returncode == 1 and bad in r.stderr and path in r.stderr, r.stderr


def test_reference_of_another_ffn_kind_is_refused(cli, tmp_path, build_fixture):
    """A BERT (GELU FFN) reference for a SwiGLU MoE of the same sizes is an error naming it."""
    transformers = require("transformers")
    moe = build_fixture("mixtral_gqa")[0]
    info = json.loads(run_cli(cli, "info", moe, "--json").stdout)
    ref = str(tmp_path / "bert")
    transformers.BertModel(transformers.BertConfig(vocab_size=97, hidden_size=info["hidden_size"],
                                                   num_hidden_layers=info["num_layers"], num_attention_heads=4,
                                                   intermediate_size=64)).save_pretrained(ref)
    r = run_cli(cli, "analyze", moe, "--static", "S1", "--reference", ref, "--out", str(tmp_path / "s.h5"), check=False)
    assert r.returncode == 1 and ref in r.stderr and "model_type" in r.stderr and "kind" in r.stderr, r.stderr

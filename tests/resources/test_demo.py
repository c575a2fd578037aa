"""The shipped demo models (resources/demo): what they are on disk, that the CLI opens, traces and
analyses them by path and from an installed tree, and that our engine routes them exactly as HF
transformers does (their bf16 weights, computed in float32)."""
import json
import os
import shutil
import struct
import subprocess
import sys

import numpy as np
import pytest

from conftest import require, run_cli

DEMO = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))), "resources", "demo")
sys.path.insert(0, DEMO)
import train_demo  # noqa: E402  (the script that made the demo: what ships, the statistics)
MOE, DENSE, JETMOE = os.path.join(DEMO, "moe"), os.path.join(DEMO, "dense"), os.path.join(DEMO, "jetmoe")


def st_header(path):
    with open(path, "rb") as f:
        n = struct.unpack("<Q", f.read(8))[0]
        return json.loads(f.read(n))


def sample_prompts():
    with open(os.path.join(DEMO, "prompts.jsonl"), encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def test_artifacts_on_disk():
    """bf16 tensors only, at most 16 MB together, one tokenizer for both models, the MoE an
    upcycled copy of the dense model's shape (same attention, embeddings, expert width = dense FFN)."""
    shipped = sum(train_demo.tree_bytes(os.path.join(DEMO, p)) for p in train_demo.PAIR)
    assert shipped <= 16_000_000  # 16 MB, decimal (the stricter reading)
    for d in (MOE, DENSE):
        header = st_header(os.path.join(d, "model.safetensors"))
        dtypes = {v["dtype"] for k, v in header.items() if k != "__metadata__"}
        assert dtypes == {"BF16"}, (d, dtypes)
    with open(os.path.join(MOE, "tokenizer.json"), "rb") as a, open(os.path.join(DENSE, "tokenizer.json"), "rb") as b:
        assert a.read() == b.read()
    moe = json.load(open(os.path.join(MOE, "config.json")))
    dense = json.load(open(os.path.join(DENSE, "config.json")))
    assert moe["model_type"] == "mixtral" and dense["model_type"] == "llama"
    for key in ("hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads", "num_key_value_heads",
                "vocab_size", "tie_word_embeddings"):
        assert moe[key] == dense[key], key
    prompts = sample_prompts()
    assert {p["domain"] for p in prompts} == {"en", "de", "fr", "es", "code"}


def test_jetmoe_demo_on_disk_and_routes_as_hf(cli, tmp_path):
    """The JetMoE demo: at most 5 MB, bf16, the demo pair's tokenizer; the sample prompts' both
    routers of every layer choose as HF's JetMoeForCausalLM does, logits close."""
    transformers = require("transformers")
    h5py = require("h5py")
    import torch
    assert train_demo.tree_bytes(JETMOE) <= 5_000_000
    header = st_header(os.path.join(JETMOE, "model.safetensors"))
    assert {v["dtype"] for k, v in header.items() if k != "__metadata__"} == {"BF16"}
    with open(os.path.join(MOE, "tokenizer.json"), "rb") as a, open(os.path.join(JETMOE, "tokenizer.json"), "rb") as b:
        assert a.read() == b.read()
    info = json.loads(run_cli(cli, "info", JETMOE, "--json").stdout)
    assert info["model_type"] == "jetmoe" and info["attention_experts"]["num_experts"] == 8
    model = transformers.AutoModelForCausalLM.from_pretrained(JETMOE, dtype=torch.float32).eval()
    assert info["total_params"] == sum(p.numel() for p in model.parameters())
    out = tmp_path / "j.h5"
    run_cli(cli, "trace", JETMOE, "--prompts", os.path.join(DEMO, "prompts.jsonl"), "--save-logits", "--run", "demo",
            "--out", out)
    logits = {}
    for l, layer in enumerate(model.model.layers):
        for kind, router in (("attention", layer.self_attention.experts.router), ("ffn", layer.mlp.router)):
            router.register_forward_hook(lambda m, a, o, key=(kind, l): logits.__setitem__(key, o[4]))
    k = model.config.num_experts_per_tok
    with h5py.File(out, "r") as f:
        run = f["runs/demo"]
        off = run["prompt_offsets"][:]
        for i in range(len(off) - 1):
            ids = run["tokens"][off[i]:off[i + 1]]
            with torch.no_grad():
                ref = model(input_ids=torch.tensor([ids])).logits[0].numpy()
            assert np.abs(run["logits"][off[i]:off[i + 1]] - ref).max() <= 1e-3 * np.abs(ref).max()
            for (kind, l), rl in logits.items():
                g = run[f"layers/{l}/attention"] if kind == "attention" else run[f"layers/{l}"]
                top = torch.topk(rl, k + 1, dim=-1)
                ours = g["topk_experts"][off[i]:off[i + 1]]
                same = (ours == top.indices[:, :k].numpy()).all(axis=1)
                gaps = (top.values[:, k - 1] - top.values[:, k]).numpy()
                assert np.all(same | (gaps < 1e-4)), (kind, l, i)
                np.testing.assert_allclose(g["router_logits"][off[i]:off[i + 1]], rl.numpy(), atol=2e-4, rtol=0)


def test_info_by_path(cli):
    moe = json.loads(run_cli(cli, "info", MOE, "--json").stdout)
    dense = json.loads(run_cli(cli, "info", DENSE, "--json").stdout)
    cfg = json.load(open(os.path.join(MOE, "config.json")))
    assert moe["model_type"] == "mixtral" and moe["dtype"] == "BF16"
    assert moe["num_experts"] == cfg["num_local_experts"] and moe["top_k"] == cfg["num_experts_per_tok"]
    assert moe["moe_layers"] == list(range(cfg["num_hidden_layers"]))
    assert dense["model_type"] == "llama" and dense["moe_layers"] == []
    transformers = require("transformers")
    import torch
    for d, info in ((MOE, moe), (DENSE, dense)):
        model = transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32)
        assert info["total_params"] == sum(p.numel() for p in model.parameters())
    text = run_cli(cli, "info", MOE).stdout
    assert "mixtral" in text and "BF16" in text


def test_trace_prompts_route_as_hf(cli, tmp_path):
    """The sample prompts through `trace --prompts`: token ids equal HF tokenizers', the top-2
    experts of every token and layer equal HF transformers' on the same weights, logits close."""
    transformers = require("transformers")
    h5py = require("h5py")
    import torch
    from tokenizers import Tokenizer
    tok = Tokenizer.from_file(os.path.join(MOE, "tokenizer.json"))
    prompts = sample_prompts()
    out = tmp_path / "s.h5"
    run_cli(cli, "trace", MOE, "--prompts", os.path.join(DEMO, "prompts.jsonl"), "--save-logits", "--run", "demo",
            "--out", out)
    run_cli(cli, "trace", MOE, "--prompt", prompts[0]["text"], "--run", "one", "--out", out)
    model = transformers.AutoModelForCausalLM.from_pretrained(MOE, dtype=torch.float32)
    model.eval()
    k = model.config.num_experts_per_tok
    with h5py.File(out, "r") as f:
        run = f["runs/demo"]
        offsets = run["prompt_offsets"][:]
        assert list(f["runs/one/tokens"][:]) == tok.encode(prompts[0]["text"]).ids
        for i, p in enumerate(prompts):
            ids = tok.encode(p["text"]).ids
            a, b = offsets[i], offsets[i + 1]
            assert list(run["tokens"][a:b]) == ids
            with torch.no_grad():
                ref = model(input_ids=torch.tensor([ids]), output_router_logits=True)
            for layer, rl in enumerate(ref.router_logits):
                probs = torch.softmax(rl.float(), dim=-1)
                top = torch.topk(probs, k, dim=-1)
                ours = run[f"layers/{layer}/topk_experts"][a:b]
                # a near-tie may order differently only where the two scores are equal in float32
                same = (np.sort(ours, axis=1) == np.sort(top.indices.numpy(), axis=1)).all(axis=1)
                gaps = (top.values[:, k - 1] - torch.topk(probs, k + 1, dim=-1).values[:, k]).numpy()
                assert np.all(same | (gaps < 1e-6)), (p["source"], layer)
                np.testing.assert_allclose(run[f"layers/{layer}/router_logits"][a:b], rl.numpy(), atol=2e-4, rtol=0)
            logits = ref.logits[0].numpy()
            assert np.abs(run["logits"][a:b] - logits).max() <= 1e-3 * np.abs(logits).max()


def test_analyze_with_dense_reference(cli, tmp_path):
    """analyze on the pair: the dense FFN is the F row of the weight similarities, and the
    dynamic analyses run on the short preset."""
    h5py = require("h5py")
    out = tmp_path / "a.h5"
    run_cli(cli, "analyze", MOE, "--out", out, "--static", "default", "--dynamic", "all", "--preset", "short",
            "--reference", DENSE)
    with h5py.File(out, "r") as f:
        sim = f["analyses/weight_similarity/layers/0/gate"]
        labels = [x.decode() if isinstance(x, bytes) else x for x in sim.attrs["labels"]]
        assert labels[-1] == "F" and len(labels) == 9
        # right after upcycling every expert was the dense FFN plus 1% noise; training moved them
        assert np.all(sim[:8, 8] > 0) and np.all(sim[:8, 8] < 1)
        assert "norm_score_ranks/short/top1_is_max_norm" in f["analyses"]
        assert "layer_diversity/outputs/short/cosine" in f["analyses"]


def test_installed_tree(cli, tmp_path):
    """`cmake --install` puts the demo under share/expertscope/demo, where the CLI opens it."""
    build = os.environ.get("EXPERTSCOPE_BUILD_DIR")
    if not build:
        pytest.fail("EXPERTSCOPE_BUILD_DIR must name the build tree (ctest sets it)")
    prefix = tmp_path / "prefix"
    subprocess.run(["cmake", "--install", build, "--prefix", str(prefix), "--component", "demo"], check=True,
                   capture_output=True)
    installed = prefix / "share" / "expertscope" / "demo"
    for p in train_demo.SHIPPED:
        assert train_demo.tree_bytes(installed / p) == train_demo.tree_bytes(os.path.join(DEMO, p))
    info = json.loads(run_cli(cli, "info", installed / "moe", "--json").stdout)
    assert info["fingerprint"] == json.loads(run_cli(cli, "info", MOE, "--json").stdout)["fingerprint"]
    shutil.rmtree(prefix)


def test_specialisation_statistic_against_scipy():
    """train_demo.py's JS statistic (equal weights, bits) against scipy: for two domains the square
    of scipy's Jensen-Shannon distance, for five H(mean) - mean H with scipy.stats.entropy; and the
    permutation p-value is small for separated domains and large for exchangeable ones."""
    require("scipy")
    from scipy.spatial.distance import jensenshannon
    from scipy.stats import entropy
    rng = np.random.default_rng(0)
    counts = rng.integers(0, 50, size=(40, 3, 8))
    labels = rng.integers(0, 2, size=40)
    ours = train_demo.js_statistic(counts, labels, 2)
    for layer in range(3):
        p, q = (counts[labels == d, layer].sum(0) for d in (0, 1))
        assert abs(ours[layer] - jensenshannon(p, q, base=2) ** 2) < 1e-12
    labels5 = np.arange(40) % 5
    ours5 = train_demo.js_statistic(counts, labels5, 5)
    for layer in range(3):
        dists = [counts[labels5 == d, layer].sum(0) / counts[labels5 == d, layer].sum() for d in range(5)]
        expect = entropy(np.mean(dists, axis=0), base=2) - np.mean([entropy(x, base=2) for x in dists])
        assert abs(ours5[layer] - expect) < 1e-12
    # domain d favours expert d: separated; the same distribution for all: exchangeable
    sep = rng.multinomial(100, [0.1] * 8, size=(40, 1)) + 30 * (np.arange(8)[None, None, :] == labels5[:, None, None])
    _, _, _, p_sep = train_demo.permutation_test(sep, labels5, 5, 199, 0)
    _, _, _, p_same = train_demo.permutation_test(rng.multinomial(100, [0.125] * 8, size=(40, 1)), labels5, 5, 199, 0)
    assert p_sep[0] == 1 / 200 and p_same[0] > 0.05


def test_domain_findings_reproduced(cli, tmp_path):
    """resources/demo/domain_demo.py: the README's domain-specialisation table (computed in PyTorch
    and numpy when the demo was trained) reproduced by the app's corpus command on the held-out
    documents (fetched from Debian, as train_demo.py does, into build/demo-work)."""
    require("h5py"), require("tokenizers")  # what the script reads with
    work = os.path.join(os.environ.get("EXPERTSCOPE_BUILD_DIR", os.path.join(DEMO, "..", "..", "build")), "demo-work")
    r = subprocess.run([sys.executable, os.path.join(DEMO, "domain_demo.py"), "--cli", cli, "--work", work,
                        "--out", str(tmp_path / "domain.h5")], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "OK: the app's JS is within" in r.stdout and "in 68 of 68 documents" in r.stdout, r.stdout

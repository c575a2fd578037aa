"""Corpus runs (analyses-spec 7.5; issue: routing over a corpus): a JSONL corpus traced in batches
into a spool, cut short (a crash in the middle of a batch, Ctrl-C) and resumed, then joined to the
session with its statistics.

Oracles: HF tokenizers for the token ids, HF transformers (MixtralForCausalLM) for the router
logits and choices of every window, and numpy/scipy for every statistic recomputed from the
session's arrays read with h5py. The model is the shipped demo MoE (resources/demo/moe: Mixtral,
6 layers, 8 experts, top-2, its own tokenizer)."""
import json
import shutil
import os
import signal
import subprocess

import numpy as np
import pytest

from conftest import require, run_cli
import reference as R
from sessiondoc import walk_against_doc

h5py = require("h5py")

DEMO = os.path.join(os.path.dirname(__file__), "..", "..", "resources", "demo")
MOE = os.path.abspath(os.path.join(DEMO, "moe"))
RUN = "web"
WINDOW, BATCH = 24, 60


def corpus_lines():
    """The demo's sample prompts (five labelled domains), each also longer (so it is cut into
    windows), a line without a label, an integer label and an empty line."""
    docs = [json.loads(x) for x in open(os.path.join(DEMO, "prompts.jsonl"), encoding="utf-8")]
    lines = []
    for i, d in enumerate(docs):
        text = d["text"] if i % 3 else d["text"] + "\n" + " ".join(x["text"] for x in docs[:3])
        lines.append(json.dumps({"text": text, "label": d["domain"]}))
    lines.insert(3, json.dumps({"text": "No label on this one."}))
    lines.insert(6, "")
    lines.append(json.dumps({"text": "An integer label.", "label": 7}))
    return lines


def write_corpus(path, lines):
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(lines) + "\n")
    return path


def corpus_args(corpus, out, *extra):
    return ["corpus", MOE, "--corpus", corpus, "--out", out, "--run", RUN, "--window", WINDOW,
            "--batch-tokens", BATCH, "--permutations", 400, *extra]


@pytest.fixture(scope="module")
def hf():
    torch = require("torch")
    transformers = require("transformers")
    tokenizers = require("tokenizers")
    model = transformers.AutoModelForCausalLM.from_pretrained(MOE, dtype=torch.float32)
    model.eval()
    return model, tokenizers.Tokenizer.from_file(os.path.join(MOE, "tokenizer.json"))


@pytest.fixture(scope="module")
def whole(cli, tmp_path_factory):
    """One uninterrupted corpus run: the session and the corpus."""
    d = tmp_path_factory.mktemp("corpus")
    corpus = write_corpus(str(d / "c.jsonl"), corpus_lines())
    out = str(d / "s.h5")
    run_cli(cli, *corpus_args(corpus, out))
    assert not os.path.exists(out + f".{RUN}.partial"), "the spool outlived a complete run"
    return out, corpus


def run_arrays(path):
    """Every dataset of the run by path inside it, and the run's attributes but when it was made."""
    out, attrs = {}, {}
    with h5py.File(path, "r") as f:
        def visit(name, obj):
            if isinstance(obj, h5py.Dataset):
                out[name] = obj[()]
        f[f"runs/{RUN}"].visititems(visit)
        for k, v in f[f"runs/{RUN}"].attrs.items():
            if k != "created":
                attrs[k] = json.loads(v) if k == "corpus_json" else v
    return out, attrs


def assert_same_run(got, want):
    (a, aa), (b, ba) = run_arrays(got), run_arrays(want)
    assert aa == ba  # the same progress (nothing counted twice), device, dtype
    assert sorted(a) == sorted(b)
    for k in a:
        if a[k].dtype == object:  # strings, or byte arrays (token_bytes)
            assert [bytes(x) for x in a[k]] == [bytes(x) for x in b[k]], k
        else:
            np.testing.assert_array_equal(a[k], b[k], err_msg=k)


def test_corpus_run_matches_hf(whole, hf):
    out, corpus = whole
    model, tok = hf
    torch = require("torch")
    walk_against_doc(out)  # every object and attribute as docs/session-format.md says
    lines = open(corpus, encoding="utf-8").read().split("\n")
    windows, labels, docs = [], [], []
    for n, line in enumerate(lines, start=1):
        if not line:
            continue
        o = json.loads(line)
        ids = tok.encode(o["text"]).ids
        for a in range(0, len(ids), WINDOW):
            windows.append(ids[a:a + WINDOW])
            labels.append(str(o["label"]) if "label" in o else "")
            docs.append(n)
    with h5py.File(out, "r") as f:
        r = f[f"runs/{RUN}"]
        state = json.loads(r.attrs["corpus_json"])
        assert state["complete"] and state["window"] == WINDOW and state["documents"] == len(set(docs))
        assert state["tokens"] == sum(map(len, windows)) and state["prompts"] == len(windows)
        offs = r["prompt_offsets"][()]
        np.testing.assert_array_equal(np.diff(offs), [len(w) for w in windows])
        np.testing.assert_array_equal(r["tokens"][()], np.concatenate(windows))
        assert [x.decode() for x in r["prompt_labels"][()]] == labels
        np.testing.assert_array_equal(r["prompt_documents"][()], docs)
        assert len(r["token_pieces"]) == offs[-1]
        E, k = model.config.num_local_experts, model.config.num_experts_per_tok
        for l in range(model.config.num_hidden_layers):
            logits = r[f"layers/{l}/router_logits"][()]
            top = r[f"layers/{l}/topk_experts"][()]
            for p, w in enumerate(windows):
                with torch.no_grad():
                    rl = model(input_ids=torch.tensor([w]), output_router_logits=True).router_logits[l]
                rl = rl.reshape(len(w), E).double().numpy()
                np.testing.assert_allclose(logits[offs[p]:offs[p + 1]], rl, atol=2e-4, rtol=0)
                srt = np.sort(rl, axis=1)
                clear = srt[:, -k] - srt[:, -k - 1] > 1e-3  # not a near tie at the k-th choice
                hf_top = np.argsort(-rl, axis=1, kind="stable")[:, :k]
                np.testing.assert_array_equal(top[offs[p]:offs[p + 1]][clear], hf_top[clear],
                                              err_msg=f"layer {l}, window {p}")


def test_corpus_statistics_match_numpy(whole):
    scipy_special = require("scipy.special")
    scipy_stats = require("scipy.stats")
    out, _ = whole
    with h5py.File(out, "r") as f:
        r = f[f"runs/{RUN}"]
        offs, tokens = r["prompt_offsets"][()], r["tokens"][()]
        layers = sorted(int(x) for x in r["layers"])
        E = f["model"].attrs["num_experts"]
        lb, tk, dm = (f"analyses/{x}/{RUN}" for x in ("expert_load", "expert_tokens", "domain_specialisation"))
        ids = {l: r[f"layers/{l}/topk_experts"][()] for l in layers}
        z = {l: r[f"layers/{l}/router_logits"][()].astype(np.float64) for l in layers}
        counts = np.stack([np.bincount(ids[l].ravel(), minlength=E) for l in layers])
        np.testing.assert_array_equal(f[f"{lb}/counts"][()], counts)
        np.testing.assert_allclose(f[f"{lb}/fractions"][()], counts / counts.sum(1, keepdims=True), atol=1e-6)
        P = np.stack([scipy_special.softmax(z[l], axis=1).sum(0) for l in layers])
        switch = E * ((P / P.sum(1, keepdims=True)) * (counts / counts.sum(1, keepdims=True))).sum(1)
        np.testing.assert_allclose(f[f"{lb}/switch_loss"][()], switch, rtol=1e-9)
        np.testing.assert_allclose(f[f"{lb}/z_loss"][()],
                                   [(scipy_special.logsumexp(z[l], axis=1) ** 2).mean() for l in layers], rtol=1e-9)
        np.testing.assert_allclose(f[f"{lb}/routing_entropy"][()],
                                   [scipy_stats.entropy(scipy_special.softmax(z[l], axis=1), axis=1).mean()
                                    for l in layers], rtol=1e-9)
        # adjacent tokens sharing an expert: within a prompt (window) only
        shared = [np.mean([len(set(ids[l][t - 1]) & set(ids[l][t])) > 0 for p in range(len(offs) - 1)
                           for t in range(offs[p] + 1, offs[p + 1])]) for l in layers]
        np.testing.assert_allclose(f[f"{lb}/consecutive_share"][()], shared, atol=1e-6)
        for pi, (a, b) in enumerate(zip(layers[:-1], layers[1:])):
            np.testing.assert_allclose(f[f"{lb}/transition_nmi"][pi],
                                       R.normalized_mutual_information(ids[a][:, 0], ids[b][:, 0]), atol=1e-12)
        for l in layers:
            for mode, ch in (("topk", ids[l]), ("top1", ids[l][:, :1])):
                for key, v in R.expert_tokens(tokens, ch, E).items():
                    np.testing.assert_array_equal(f[f"{tk}/layers/{l}/{mode}_{key}"][()], v, err_msg=f"{l} {key}")
        # domain specialisation: documents (corpus lines) with a label; unlabelled ones left out
        docs = r["prompt_documents"][()]
        plabels = [x.decode() for x in r["prompt_labels"][()]]
        order, doc_label, doc_counts = [], {}, {}
        for p in range(len(offs) - 1):
            d = docs[p]
            if d not in doc_label:
                order.append(d)
                doc_label[d] = plabels[p]
                doc_counts[d] = np.zeros((len(layers), E), np.int64)
            for li, l in enumerate(layers):
                doc_counts[d][li] += np.bincount(ids[l][offs[p]:offs[p + 1]].ravel(), minlength=E)
        kept = [d for d in order if doc_label[d]]
        names = list(dict.fromkeys(doc_label[d] for d in kept))
        lab = np.array([names.index(doc_label[d]) for d in kept])
        C = np.stack([doc_counts[d] for d in kept])  # [docs, layers, E]
        g = f[dm]
        params = json.loads(g.attrs["params_json"])
        assert params["unlabelled_documents"] == 1 and params["permutations"] == 400
        assert [x.decode() if isinstance(x, bytes) else x for x in g["usage"].attrs["labels"]] == names
        js_all, js_mean, pairs = domain_stats(C, lab, len(names))
        np.testing.assert_allclose(g["js_all"][()], js_all, atol=1e-12)
        np.testing.assert_allclose(g["js_mean"][()], js_mean, atol=1e-12)
        np.testing.assert_allclose(g["js_pairs"][()], pairs, atol=1e-12)
        usage = np.stack([np.stack([C[lab == d, li].sum(0) for d in range(len(names))]) for li in range(len(layers))])
        np.testing.assert_array_equal(g["counts"][()], usage)
        np.testing.assert_allclose(g["usage"][()], usage / usage.sum(-1, keepdims=True), atol=1e-12)
        # the permutation test against numpy's own shuffles: within Monte-Carlo error
        null_all, null_mean = permuted(C, lab, len(names), 4000)
        for got, obs, null in ((g["js_all_p"][()], js_all, null_all), (g["js_mean_p"][()], js_mean, null_mean)):
            want = (1 + (null >= obs - 1e-12).sum(0)) / (1 + len(null))
            se = np.sqrt(want * (1 - want) / 400) + 1.0 / 400
            assert (np.abs(got - want) <= 4.5 * se).all(), (got, want)
        np.testing.assert_allclose(g["js_all_permuted_mean"][()], null_all.mean(0), rtol=0.15)
        np.testing.assert_array_equal(g["label_documents"][()], np.bincount(lab, minlength=len(names)))


def test_statistics_in_small_chunks_are_the_same(cli, whole, tmp_path):
    """corpus-stats reading each layer in chunks of a few prompts (--chunk-tokens 5: one prompt a
    chunk, most of them longer) gives every statistic the one-chunk reading gave."""
    out, _ = whole
    s = str(tmp_path / "s.h5")
    shutil.copy(out, s)
    run_cli(cli, "corpus-stats", s, "--run", RUN, "--chunk-tokens", 5, "--permutations", 400)  # as corpus_args

    def stats(path):
        got = {}
        with h5py.File(path, "r") as f:
            for rid in (f"expert_load/{RUN}", f"expert_tokens/{RUN}", f"domain_specialisation/{RUN}"):
                f["analyses/" + rid].visititems(
                    lambda name, o, rid=rid: got.__setitem__(f"{rid}/{name}", o[()]) if isinstance(o, h5py.Dataset)
                    else None)
        return got

    a, b = stats(out), stats(s)
    assert sorted(a) == sorted(b) and any("transitions_topk" in k for k in a) and any("lift" in k for k in a)
    for k in a:
        np.testing.assert_array_equal(a[k], b[k], err_msg=k)
    r = run_cli(cli, "corpus-stats", s, "--run", RUN, "--chunk-tokens", 0, check=False)
    assert r.returncode == 2 and "--chunk-tokens" in r.stderr


def entropy_bits(p):
    p = np.clip(p, 1e-300, None)
    return -(p * np.log2(p)).sum(-1)


def domain_stats(C, lab, D):
    """JS among all labels (equal weights, bits), mean pairwise JS and every pair's, per layer."""
    scipy_spatial = require("scipy.spatial")
    q = np.stack([C[lab == d].sum(0) for d in range(D)]).astype(np.float64)  # [D, L, E]
    q /= q.sum(-1, keepdims=True)
    js_all = entropy_bits(q.mean(0)) - entropy_bits(q).mean(0)
    L = C.shape[1]
    pairs = np.zeros((L, D, D))
    for li in range(L):
        for a in range(D):
            for b in range(D):
                if a != b:  # scipy's distance is the square root of the divergence
                    pairs[li, a, b] = scipy_spatial.distance.jensenshannon(q[a, li], q[b, li], base=2) ** 2
    iu = np.triu_indices(D, 1)
    return js_all, np.array([pairs[li][iu].mean() for li in range(L)]), pairs


def permuted(C, lab, D, n, seed=1):
    rng = np.random.default_rng(seed)
    a, m = [], []
    for _ in range(n):
        x, y, _ = domain_stats_fast(C, rng.permutation(lab), D)
        a.append(x)
        m.append(y)
    return np.array(a), np.array(m)


def domain_stats_fast(C, lab, D):
    q = np.stack([C[lab == d].sum(0) for d in range(D)]).astype(np.float64)
    q /= q.sum(-1, keepdims=True)
    h = entropy_bits(q)
    js_all = entropy_bits(q.mean(0)) - h.mean(0)
    iu = np.triu_indices(D, 1)
    pm = np.mean([entropy_bits((q[a] + q[b]) / 2) - (h[a] + h[b]) / 2 for a, b in zip(*iu)], axis=0)
    return js_all, pm, None


def test_p_values_behave(cli, tmp_path):
    """Documents whose label is their content (each made of its domain's sample sentences) reach
    the smallest p-value possible; labels drawn at random spread the p-values over (0, 1]."""
    scipy_stats = require("scipy.stats")
    rng = np.random.default_rng(3)
    by_domain = {}
    for x in open(os.path.join(DEMO, "prompts.jsonl"), encoding="utf-8"):
        d = json.loads(x)
        by_domain.setdefault(d["domain"], []).extend(d["text"].split())
    lines = []
    for i in range(6):
        for dom, words in by_domain.items():
            a = int(rng.integers(0, len(words) // 2))
            lines.append(json.dumps({"text": " ".join(words[a:] + words[:a]), "label": dom}))
    corpus = write_corpus(str(tmp_path / "domains.jsonl"), lines)
    s = str(tmp_path / "s.h5")
    r = run_cli(cli, "corpus", MOE, "--corpus", corpus, "--out", s, "--run", RUN, "--permutations", 199, "--json")
    d = next(x for x in json.loads(r.stdout) if x["kind"] == "domain")
    assert min(d["js_all_p"]) == pytest.approx(1 / 200) and min(d["js_mean_p"]) == pytest.approx(1 / 200), d
    assert np.mean(np.array(d["js_all_p"]) <= 0.01) >= 0.5, d
    ps = []
    for i in range(24):
        lab = tmp_path / f"l{i}.txt"
        lab.write_text("\n".join(rng.choice(["a", "b", "c"], len(lines))) + "\n")
        j = json.loads(run_cli(cli, "corpus-stats", s, "--run", RUN, "--labels", lab, "--permutations", 199,
                               "--seed", i, "--json").stdout)
        d = next(x for x in j if x["kind"] == "domain")
        ps.append(d["js_all_p"][3])
    assert scipy_stats.kstest(ps, "uniform").pvalue > 1e-3, ps


def test_crash_in_a_batch_resumes_to_the_same_run(cli, whole, tmp_path):
    out, corpus = whole
    cut_inside = False  # a batch that ends inside a document (the resume goes on in its middle)
    for batch in (0, 3, 5):  # before the first commit, later
        s = str(tmp_path / f"s{batch}.h5")
        spool = s + f".{RUN}.partial"
        r = subprocess.run([cli, *map(str, corpus_args(corpus, s))], capture_output=True, text=True,
                           env={**os.environ, "EXPERTSCOPE_CORPUS_FAULT_BATCH": str(batch)}, timeout=300)
        assert r.returncode == 86, r.stderr
        assert os.path.isdir(spool) and not os.path.exists(s)
        committed = sorted(x for x in os.listdir(spool) if x.startswith("batch-"))
        assert committed == [f"batch-{i:06d}.h5" for i in range(batch)], os.listdir(spool)
        for b in committed:  # each committed batch is a session file of its own
            with h5py.File(os.path.join(spool, b), "r") as f:
                st = json.loads(f[f"runs/{RUN}"].attrs["corpus_json"])
                assert st["batch"] == int(b[6:12])
                cut_inside |= st["skip_windows"] > 0
        again = run_cli(cli, *corpus_args(corpus, s), check=False)
        assert again.returncode == 1 and "--resume" in again.stderr and spool in again.stderr, again.stderr
        run_cli(cli, *corpus_args(corpus, s, "--resume"))
        assert not os.path.exists(spool)
        assert_same_run(s, out)
    assert cut_inside
    # the corpus cut at its first 5 documents, stopped in the middle of one and resumed
    ref, s = str(tmp_path / "five.h5"), str(tmp_path / "five-resumed.h5")
    run_cli(cli, *corpus_args(corpus, ref, "--max-documents", 5))
    r = subprocess.run([cli, *map(str, corpus_args(corpus, s, "--max-documents", 5))], capture_output=True,
                       text=True, env={**os.environ, "EXPERTSCOPE_CORPUS_FAULT_BATCH": "4"}, timeout=300)
    assert r.returncode == 86, r.stderr
    last = sorted(x for x in os.listdir(s + f".{RUN}.partial") if x.startswith("batch-"))[-1]
    with h5py.File(os.path.join(s + f".{RUN}.partial", last), "r") as f:
        assert json.loads(f[f"runs/{RUN}"].attrs["corpus_json"])["skip_windows"] > 0
    r = run_cli(cli, *corpus_args(corpus, s, "--resume"), check=False)  # another --max-documents
    assert r.returncode == 1 and "--max-documents" in r.stderr, r.stderr
    r = run_cli(cli, *corpus_args(corpus, s, "--max-documents", 5, "--resume", "--dtype", "bfloat16"), check=False)
    assert r.returncode == 1 and "--dtype float32" in r.stderr, r.stderr
    run_cli(cli, *corpus_args(corpus, s, "--max-documents", 5, "--resume"))
    assert_same_run(s, ref)
    with h5py.File(ref, "r") as f:
        assert json.loads(f[f"runs/{RUN}"].attrs["corpus_json"])["documents"] == 5


def test_ctrl_c_stops_and_resume_finishes(cli, whole, tmp_path):
    _, corpus = whole
    big = write_corpus(str(tmp_path / "big.jsonl"), [x for x in corpus_lines() if x] * 40)
    s = str(tmp_path / "s.h5")
    spool = s + f".{RUN}.partial"
    args = [cli, *map(str, corpus_args(big, s, "--no-statistics"))]
    p = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    seen = ""
    while "tokens)" not in seen:  # a batch committed (the spool is open for writing: read its report)
        c = p.stderr.read(1)
        assert c, f"the run ended before a batch was committed: {seen}"
        seen += c
    p.send_signal(signal.SIGINT)
    err = p.communicate(timeout=120)[1]
    assert p.returncode == 130, err
    assert "--resume" in err
    last = sorted(x for x in os.listdir(spool) if x.startswith("batch-"))[-1]
    with h5py.File(os.path.join(spool, last), "r") as f:
        done = json.loads(f[f"runs/{RUN}"].attrs["corpus_json"])
    assert 0 < done["documents"] < 40 * 11
    run_cli(cli, *corpus_args(big, s, "--no-statistics", "--resume"))
    ref = str(tmp_path / "ref.h5")
    run_cli(cli, *corpus_args(big, ref, "--no-statistics"))
    assert_same_run(s, ref)


def test_refusals(cli, whole, tmp_path):
    out, corpus = whole
    bad = write_corpus(str(tmp_path / "bad.jsonl"), ['{"text": "fine"}', '{"txt": "no text"}'])
    r = run_cli(cli, *corpus_args(bad, str(tmp_path / "a.h5")), check=False)
    assert r.returncode == 1 and "bad.jsonl" in r.stderr and "line 2" in r.stderr, r.stderr
    nul = str(tmp_path / "nul.txt")
    with open(nul, "wb") as f:
        f.write(b"one line\ntwo\x00 lines\n")
    r = run_cli(cli, "corpus", MOE, "--corpus", nul, "--out", str(tmp_path / "n.h5"), check=False)
    assert r.returncode == 1 and "nul.txt" in r.stderr and "line 2" in r.stderr and "NUL" in r.stderr, r.stderr
    lab = write_corpus(str(tmp_path / "lab.jsonl"), ['{"text": "fine", "label": [1]}'])
    r = run_cli(cli, *corpus_args(lab, str(tmp_path / "b.h5")), check=False)
    assert r.returncode == 1 and "line 1.label" in r.stderr, r.stderr
    r = run_cli(cli, *corpus_args(corpus, out), check=False)  # the run exists
    assert r.returncode == 1 and f"/runs/{RUN}" in r.stderr, r.stderr
    r = run_cli(cli, *corpus_args(corpus, str(tmp_path / "c.h5"), "--resume"), check=False)
    assert r.returncode == 1 and "no stopped corpus run" in r.stderr, r.stderr
    r = run_cli(cli, "corpus", MOE, "--corpus", corpus, "--out", str(tmp_path / "d.h5"), "--window", 100000,
                check=False)
    assert r.returncode == 2 and "positions" in r.stderr, r.stderr
    r = run_cli(cli, "corpus", MOE, "--out", str(tmp_path / "d.h5"), check=False)
    assert r.returncode == 2 and "--corpus" in r.stderr
    # a stopped run resumed on a changed corpus
    s = str(tmp_path / "e.h5")
    subprocess.run([cli, *map(str, corpus_args(corpus, s))], capture_output=True,
                   env={**os.environ, "EXPERTSCOPE_CORPUS_FAULT_BATCH": "3"}, timeout=300)
    changed = open(corpus, encoding="utf-8").read().replace("a", "o", 1)
    with open(corpus + ".changed.jsonl", "w", encoding="utf-8") as f:
        f.write(changed)
    os.replace(corpus + ".changed.jsonl", str(tmp_path / "changed.jsonl"))
    r = run_cli(cli, *corpus_args(str(tmp_path / "changed.jsonl"), s, "--resume"), check=False)
    assert r.returncode == 1 and "changed.jsonl" in r.stderr and "not the file" in r.stderr, r.stderr
    # labels of another count than the documents
    few = tmp_path / "few.txt"
    few.write_text("a\nb\n")
    r = run_cli(cli, "corpus-stats", out, "--run", RUN, "--labels", few, check=False)
    assert r.returncode == 1 and "labels given" in r.stderr, r.stderr


def test_views_of_a_corpus_run(cli, whole, tmp_path):
    """The domain views in every format, their CSVs equal to the session's arrays; the load views
    offer the corpus run too."""
    import csv
    out, _ = whole
    views = {v["name"]: v for v in json.loads(run_cli(cli, "export", out, "--list", "--json").stdout)}
    for name in ("expert-load", "load-balance", "layer-routes", "expert-tokens", "domain-usage", "domain-divergence"):
        assert RUN in views[name]["runs"], name
    assert views["domain-usage"]["layers"] == list(range(6))
    for view in ("domain-usage", "domain-divergence"):
        for fmt in ("png", "svg", "csv"):
            p = str(tmp_path / f"{view}.{fmt}")
            run_cli(cli, "export", out, "--view", view, "--layer", 3, "--out", p)
            assert os.path.getsize(p) > 0
    with h5py.File(out, "r") as f:
        g = f[f"analyses/domain_specialisation/{RUN}"]
        labels = [x.decode() if isinstance(x, bytes) else x for x in g["usage"].attrs["labels"]]
        with open(tmp_path / "domain-usage.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        assert rows[0] == ["layer", "label", "expert", "count", "share"]
        got = np.array([[float(x) for x in r[3:]] for r in rows[1:]])
        np.testing.assert_array_equal(got[:, 0], g["counts"][()].ravel())
        np.testing.assert_allclose(got[:, 1], g["usage"][()].ravel(), rtol=1e-15)
        assert [r[1] for r in rows[1:9]] == [labels[0]] * 8
        with open(tmp_path / "domain-divergence.csv", newline="", encoding="utf-8") as fh:
            rows = list(csv.reader(fh))
        for j, name in enumerate(rows[0][1:], start=1):
            np.testing.assert_allclose([float(r[j]) for r in rows[1:]], g[name][()], rtol=1e-15, err_msg=name)

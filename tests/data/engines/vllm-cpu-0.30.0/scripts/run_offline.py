import os, sys, io, base64, json, time
import numpy as np
model = sys.argv[1]
def main():
    from vllm import LLM, SamplingParams
    from vllm.inputs import TokensPrompt
    llm = LLM(model=model, skip_tokenizer_init=True, enable_return_routed_experts=os.environ.get("NORE")!="1",
              max_model_len=256, max_num_seqs=4, max_num_batched_tokens=256, dtype="bfloat16", seed=0, enforce_eager=os.environ.get("EAGER")=="1", block_size=int(os.environ.get("BS","16")))
    sp = SamplingParams(max_tokens=5, temperature=0.0, ignore_eos=True, detokenize=False)
    p1 = list(range(10, 10+40))          # 40 prompt tokens
    p2 = p1[:32] + [300, 301, 302]       # shares a 32-token prefix (2 blocks of 16)
    outs = llm.generate([TokensPrompt(prompt_token_ids=p1)], sp)
    outs2 = llm.generate([TokensPrompt(prompt_token_ids=p2)], sp)
    res = {}
    for name, o in (("p1", outs[0]), ("p2", outs2[0])):
        c = o.outputs[0]
        re_ = c.routed_experts
        res[name] = dict(prompt_len=len(o.prompt_token_ids), out_len=len(c.token_ids), num_cached=o.num_cached_tokens,
            routed_shape=None if re_ is None else list(re_.shape), dtype=None if re_ is None else str(re_.dtype),
            has_prompt_routed=hasattr(o, "prompt_routed_experts"))
        if re_ is not None:
            np.save(f"/tmp/research26/{os.path.basename(model)}_{name}.npy", re_); json.dump(dict(prompt=list(o.prompt_token_ids), out=list(c.token_ids)), open(f"/tmp/research26/{os.path.basename(model)}_{name}_ids.json","w"))
            res[name]["layer_sums"] = [int(re_[:, l].sum()) for l in range(re_.shape[1])]
            res[name]["first_row"] = re_[0].tolist()
    print("RESULT", json.dumps(res))

if __name__ == '__main__':
    main()

"""The fuzz-regression inputs: each class of damage the mutation campaign (issue 17) and the
libFuzzer targets found, rebuilt by a script from the demo checkpoints and a session made for the
run, plus the smallest reproducers. A case is a command and what it must end in: exit 1 (bad
input) or 2 (usage error) with a message naming the file and the field, exit 0 where the input
is valid but hard (long words), never a signal, never a hang.

make(name, work, ctx) builds one case's input under `work` and returns a Case. ctx holds the
paths every case may read: ctx.demo (resources/demo/moe), ctx.session() (a session file made
once, with a routing map), ctx.cli.
"""
import json
import os
import shutil
import struct
from dataclasses import dataclass, field

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
DEMO = os.path.join(REPO, "resources", "demo", "moe")


@dataclass
class Case:
    argv: list
    rc: int
    needles: list = field(default_factory=list)  # all must appear in stderr
    stdin: bytes = b""


CASES = {}


def case(fn):
    CASES[fn.__name__] = fn
    return fn


# ---- helpers -----------------------------------------------------------------------------------

def checkpoint_copy(work, config=None, link_weights=True, demo=DEMO):
    """A copy of a demo checkpoint (the MoE one unless `demo`); config: a dict (or a str, written as
    is) replacing config.json."""
    d = os.path.join(work, "ckpt")
    os.makedirs(d, exist_ok=True)
    for f in os.listdir(demo):
        src, dst = os.path.join(demo, f), os.path.join(d, f)
        if f == "model.safetensors" and link_weights:
            os.symlink(src, dst)
        else:
            shutil.copy(src, dst)
    if config is not None:
        with open(os.path.join(d, "config.json"), "w") as fh:
            fh.write(config if isinstance(config, str) else json.dumps(config))
    return d


def demo_config():
    return json.load(open(os.path.join(DEMO, "config.json")))


def demo_tokenizer():
    return json.load(open(os.path.join(DEMO, "tokenizer.json")))


def deep(n, open_="[", close="]", inner="0"):
    return open_ * n + inner + close * n


def tokenizer_file(work, doc):
    p = os.path.join(work, "tokenizer.json")
    with open(p, "w") as fh:
        fh.write(doc if isinstance(doc, str) else json.dumps(doc))
    return p


def tokenize(path, text="x"):
    return ["tokenize", "--tokenizer", path, "--text", text]


def read_st(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    return data[8:8 + n], data[8 + n:]


def write_raw_st(path, header_bytes, blob):
    with open(path, "wb") as fh:
        fh.write(struct.pack("<Q", len(header_bytes)) + header_bytes + blob)


def st_case(work, mutate):
    """The demo checkpoint with its safetensors file rewritten by mutate(header_bytes, blob)."""
    d = checkpoint_copy(work, link_weights=False)
    st = os.path.join(d, "model.safetensors")
    h, blob = read_st(st)
    h, blob = mutate(h, blob)
    write_raw_st(st, h, blob)
    return d, st


# ---- tokenizer.json ----------------------------------------------------------------------------

@case
def tok_negative_vocab_id(work, ctx):
    t = demo_tokenizer()
    t["model"]["vocab"]["a"] = -1
    p = tokenizer_file(work, t)
    return Case(tokenize(p), 1, [p, "model.vocab.a", "out of range"])


@case
def tok_negative_added_id(work, ctx):
    t = demo_tokenizer()
    t["added_tokens"][1]["id"] = -5
    p = tokenizer_file(work, t)
    return Case(tokenize(p), 1, [p, "added_tokens[1].id", "out of range"])


@case
def tok_huge_id(work, ctx):
    t = demo_tokenizer()
    t["model"]["vocab"]["a"] = 1 << 40
    p = tokenizer_file(work, t)
    return Case(tokenize(p), 1, [p, "model.vocab.a", "out of range"])


@case
def tok_empty_merge(work, ctx):
    t = demo_tokenizer()
    t["model"]["merges"][3] = []
    p = tokenizer_file(work, t)
    return Case(tokenize(p), 1, [p, "model.merges[3]", "two tokens"])


@case
def tok_merge_of_numbers(work, ctx):
    t = demo_tokenizer()
    t["model"]["merges"][0] = [1, 2]
    p = tokenizer_file(work, t)
    return Case(tokenize(p), 1, [p, "model.merges[0][0]", "string"])


@case
def tok_split_without_pattern(work, ctx):
    t = demo_tokenizer()
    t["pre_tokenizer"] = {"type": "Sequence", "pretokenizers": [{"type": "Split", "behavior": "Isolated"}]}
    p = tokenizer_file(work, t)
    return Case(tokenize(p), 1, [p, "pre_tokenizer.pretokenizers[0].pattern", "missing"])


@case
def tok_wrong_type(work, ctx):
    t = demo_tokenizer()
    t["model"]["fuse_unk"] = "yes"
    p = tokenizer_file(work, t)
    return Case(tokenize(p), 1, [p, "model.fuse_unk", "true or false"])


@case
def tok_huge_padding(work, ctx):
    t = demo_tokenizer()
    t["padding"] = {"strategy": {"Fixed": 1 << 40}, "direction": "Right", "pad_id": 0}
    p = tokenizer_file(work, t)
    return Case(tokenize(p), 1, [p, "padding.strategy.Fixed", "out of range"])


@case
def tok_post_processor_id(work, ctx):
    t = demo_tokenizer()
    t["post_processor"] = {"type": "BertProcessing", "cls": ["<s>", 99999999], "sep": ["</s>", 1]}
    p = tokenizer_file(work, t)
    return Case(tokenize(p), 1, [p, "post_processor.cls[1]", "out of range"])


@case
def tok_deep_nesting(work, ctx):
    p = tokenizer_file(work, '{"model": ' + deep(100000) + "}")
    return Case(tokenize(p), 1, [p, "model[0][0]", "nested deeper"])


@case
def tok_deep_objects(work, ctx):
    p = tokenizer_file(work, deep(100000, '{"a":', "}", "1"))
    return Case(tokenize(p), 1, [p, "a.a.a", "nested deeper"])


def long_text_case(work, ctx, text):
    """A valid but hard input: one long word; must finish (the test's timeout catches a hang)."""
    p = os.path.join(work, "long.jsonl")
    with open(p, "w") as fh:
        fh.write(json.dumps({"text": text}) + "\n")
    return Case(["tokenize", DEMO, "--jsonl", p, "--json"], 0)


@case
def tok_long_spaces(work, ctx):
    return long_text_case(work, ctx, " " * 100000)


@case
def tok_long_accents(work, ctx):
    return long_text_case(work, ctx, "\u00e9" * 50000)


# ---- config.json -------------------------------------------------------------------------------

@case
def cfg_deep_nesting_info(work, ctx):
    c = json.dumps(demo_config())[:-1] + ', "extra": ' + deep(100000) + "}"
    d = checkpoint_copy(work, c)
    return Case(["info", d], 1, [os.path.join(d, "config.json"), "extra[0]", "nested deeper"])


@case
def cfg_deep_nesting_trace(work, ctx):
    c = json.dumps(demo_config())[:-1] + ', "extra": ' + deep(100000, '{"x":', "}", "1") + "}"
    d = checkpoint_copy(work, c)
    return Case(["trace", d, "--token-ids", "1,2", "--out", os.path.join(work, "s.h5")], 1,
                [os.path.join(d, "config.json"), "extra.x", "nested deeper"])


def cfg_case(work, key, value, needles, argv=None):
    c = demo_config()
    c[key] = value
    d = checkpoint_copy(work, c)
    return Case(argv(d) if argv else ["info", d], 1, [os.path.join(d, "config.json"), *needles])


@case
def cfg_huge_experts(work, ctx):
    return cfg_case(work, "num_local_experts", 2**31, ["num_local_experts"])


@case
def cfg_huge_layers(work, ctx):
    return cfg_case(work, "num_hidden_layers", 2**31, ["num_hidden_layers"])


@case
def cfg_huge_hidden(work, ctx):
    return cfg_case(work, "hidden_size", 2**40, ["hidden_size"])


@case
def cfg_negative_hidden(work, ctx):
    return cfg_case(work, "hidden_size", -1, ["hidden_size"])


@case
def cfg_top_k_above_experts(work, ctx):
    return cfg_case(work, "num_experts_per_tok", 9, ["num_experts_per_tok"])


@case
def cfg_layers_as_string(work, ctx):
    return cfg_case(work, "num_hidden_layers", "6", ["num_hidden_layers"])


@case
def cfg_rope_type_number(work, ctx):
    return cfg_case(work, "rope_parameters", {"rope_theta": 10000.0, "rope_type": 5}, ["rope_parameters.rope_type"])


@case
def cfg_rope_type_unsupported(work, ctx):
    # 4.x's rope_scaling wins over rope_parameters, as transformers reads them
    c = demo_config()
    c["rope_scaling"] = {"type": "dynamic", "factor": 4.0}
    c["rope_parameters"] = {"rope_type": "default", "rope_theta": 10000.0}
    d = checkpoint_copy(work, c)
    return Case(["info", d], 1, [os.path.join(d, "config.json"), "rope_scaling.type", "dynamic"])


@case
def cfg_yarn_factor_below_one(work, ctx):
    return cfg_case(work, "rope_scaling", {"type": "yarn", "factor": 0.25, "original_max_position_embeddings": 64},
                    ["rope_scaling.factor", "between 1"])


@case
def cfg_yarn_negative_beta(work, ctx):
    return cfg_case(work, "rope_parameters", {"rope_type": "yarn", "factor": 4.0, "beta_fast": -32.0},
                    ["rope_parameters.beta_fast", "negative"])


@case
def cfg_rope_theta_zero(work, ctx):
    return cfg_case(work, "rope_parameters", {"rope_type": "default", "rope_theta": 0}, ["rope_parameters.rope_theta"])


def published(name):
    """A family's published config (tests/data/configs), beside the demo weights: the config's
    reader runs in full before the table is compared with the weights."""
    return json.load(open(os.path.join(REPO, "tests", "data", "configs", name + ".json")))


def published_case(work, name, edit, needles):
    c = published(name)
    edit(c)
    d = checkpoint_copy(work, c)
    return Case(["info", d], 1, [os.path.join(d, "config.json"), *needles])


@case
def cfg_int_past_int64(work, ctx):
    # read as a 64-bit integer it wrapped to -1 ("must be positive, got -1")
    return cfg_case(work, "num_hidden_layers", 2**64 - 1, ["num_hidden_layers", "out of range"])


@case
def cfg_rms_eps_negative(work, ctx):
    # rsqrt(mean - 1): NaN activations traced and routed as data
    return cfg_case(work, "rms_norm_eps", -1.0, ["rms_norm_eps", "between"])


@case
def cfg_emoe_size_wraps(work, ctx):
    # 4 x (2^62 + 64) wrapped to the dense layer's 256: the sizes passed the layer check and
    # indexed far past the FFN's weights (now each size is bounded first)
    c = json.load(open(os.path.join(REPO, "resources", "demo", "dense", "config.json")))
    c["expertscope_emoe"] = {"format": 1, "num_experts": 4, "top_k": 1, "expert_size": 2**62 + 64, "layers": [0],
                             "gating": "mean-key"}
    d = checkpoint_copy(work, c, demo=os.path.join(REPO, "resources", "demo", "dense"))
    return Case(["info", d], 1, [os.path.join(d, "config.json"), "expertscope_emoe.expert_size"])


@case
def cfg_routed_scale_zero(work, ctx):
    # every routed expert's output times 0, every later layer's routing recorded on it
    return published_case(work, "deepseek_v3", lambda c: c.update(routed_scaling_factor=0.0),
                          ["routed_scaling_factor", "between"])


@case
def cfg_shared_experts_wrap(work, ctx):
    # (2^62 + 1) x 2048 overflowed (undefined) into a shared expert's width
    return published_case(work, "deepseek_v3", lambda c: c.update(n_shared_experts=2**62 + 1),
                          ["n_shared_experts", "out of range"])


@case
def cfg_dbrx_act_not_object(work, ctx):
    # a string where DBRX's {"name": ...} belongs read as absent (silu)
    c = {"model_type": "dbrx", "vocab_size": 4096, "d_model": 128, "n_layers": 2, "n_heads": 4, "max_seq_len": 512,
         "attn_config": {"kv_n_heads": 2, "rope_theta": 10000.0},
         "ffn_config": {"ffn_act_fn": "gelu", "moe_num_experts": 4, "moe_top_k": 2, "ffn_hidden_size": 256}}
    d = checkpoint_copy(work, c)
    return Case(["info", d], 1, [os.path.join(d, "config.json"), "ffn_config.ffn_act_fn", "object"])


@case
def cfg_gemma4_rope_not_object(work, ctx):
    # a number where a layer type's RoPE dict belongs read as absent (the default theta)
    return published_case(work, "gemma4_26b_a4b",
                          lambda c: c["text_config"]["rope_parameters"].update(full_attention=5),
                          ["text_config.rope_parameters.full_attention", "object"])


@case
def cfg_not_an_object(work, ctx):
    d = checkpoint_copy(work, "[1, 2, 3]")
    return Case(["info", d], 1, [os.path.join(d, "config.json"), "object"])


# ---- safetensors -------------------------------------------------------------------------------

@case
def st_trailing_bytes(work, ctx):
    d, st = st_case(work, lambda h, b: (h, b + b"\0" * 16))
    return Case(["info", d], 1, [st, "trailing data"])


@case
def st_gap_between_tensors(work, ctx):
    def mutate(h, blob):
        j = json.loads(h)
        names = sorted((k for k in j if k != "__metadata__"), key=lambda k: j[k]["data_offsets"][0])
        # 4 spare bytes after the first tensor: every later span moves by 4
        first_end = j[names[0]]["data_offsets"][1]
        for k in names[1:]:
            j[k]["data_offsets"] = [o + 4 for o in j[k]["data_offsets"]]
        nh = json.dumps(j).encode()
        nh += b" " * ((8 - len(nh) % 8) % 8)
        return nh, blob[:first_end] + b"\0" * 4 + blob[first_end:]

    d, st = st_case(work, mutate)
    return Case(["info", d], 1, [st, "belong to no tensor"])


@case
def st_nul_padding(work, ctx):
    d, st = st_case(work, lambda h, b: (h.rstrip(b" ") + b"\0" * 8, b))
    return Case(["info", d], 1, [st, "header", "NUL"])


@case
def st_junk_after_header(work, ctx):
    d, st = st_case(work, lambda h, b: (h.rstrip(b" ") + b" junk!!!", b))
    return Case(["info", d], 1, [st, "header", "JSON"])


@case
def st_duplicate_key(work, ctx):
    def mutate(h, blob):
        j = json.loads(h)
        name = next(k for k in j if k != "__metadata__")
        entry = json.dumps(j[name])
        text = h.decode().rstrip(" ")
        text = text[:-1] + ", " + json.dumps(name) + ": " + entry + "}"
        nh = text.encode()
        return nh + b" " * ((8 - len(nh) % 8) % 8), blob

    d, st = st_case(work, mutate)
    return Case(["info", d], 1, [st, "twice"])


@case
def st_deep_header(work, ctx):
    d, st = st_case(work, lambda h, b: (b'{"__metadata__": ' + deep(100000).encode() + b"}", b""))
    return Case(["info", d], 1, [st, "header", "nested deeper"])


def fifo_in_checkpoint(work, name):
    """The demo checkpoint with `name` replaced by a FIFO: opening it for reading would block."""
    d = checkpoint_copy(work, link_weights=False)
    p = os.path.join(d, name)
    os.remove(p)
    os.mkfifo(p)
    return Case(["info", d], 1, [p, "not a regular file"])


@case
def st_fifo_weights(work, ctx):
    return fifo_in_checkpoint(work, "model.safetensors")


@case
def fifo_config(work, ctx):
    return fifo_in_checkpoint(work, "config.json")


@case
def fifo_prompts(work, ctx):
    p = os.path.join(work, "prompts.txt")
    os.mkfifo(p)
    return Case(["trace", DEMO, "--prompts", p, "--out", os.path.join(work, "s.h5")], 1, [p, "not a regular file"])


@case
def fifo_jsonl(work, ctx):
    p = os.path.join(work, "prompts.jsonl")
    os.mkfifo(p)
    return Case(["tokenize", DEMO, "--jsonl", p], 1, [p, "not a regular file"])


@case
def fifo_tokenizer(work, ctx):
    p = os.path.join(work, "tokenizer.json")
    os.mkfifo(p)
    return Case(tokenize(p), 1, [p, "not a regular file"])


@case
def fifo_checkpoint_file(work, ctx):
    # a single-file checkpoint without a known extension: its format was sniffed by reading it
    p = os.path.join(work, "model")
    os.mkfifo(p)
    return Case(["info", p], 1, [p, "not a regular file"])


@case
def fifo_out_session(work, ctx):
    # without --run, the next free run name was looked up by opening --out
    p = os.path.join(work, "s.h5")
    os.mkfifo(p)
    return Case(["trace", DEMO, "--token-ids", "1,2", "--out", p], 1, [p, "not a regular file"])


@case
def fifo_session(work, ctx):
    p = os.path.join(work, "s.h5")
    os.mkfifo(p)
    return Case(["session", p, "--json"], 1, [p, "not a regular file"])


# ---- text files held whole in memory: at most 1 GiB (sparse files here, no disk used) ----------

def sparse(path, size=(1 << 30) + 1):
    with open(path, "wb") as f:
        f.truncate(size)
    return path


@case
def huge_prompt_file(work, ctx):
    p = sparse(os.path.join(work, "prompts.txt"))
    return Case(["trace", DEMO, "--prompts", p, "--out", os.path.join(work, "s.h5")], 1,
                [p, "prompt file of 1073741825 bytes", "as a corpus"])


@case
def huge_config_json(work, ctx):
    # every JSON file is read whole (readJsonFile): the same bound
    d = checkpoint_copy(work)
    p = os.path.join(d, "config.json")
    os.remove(p)
    sparse(p)
    return Case(["info", d], 1, [p, "JSON file of 1073741825 bytes"])


@case
def huge_paragraphs_file(work, ctx):
    p = sparse(os.path.join(work, "paragraphs.txt"))
    return Case(["analyze", DEMO, "--out", os.path.join(work, "s.h5"), "--static", "none", "--dynamic", "D4",
                 "--paragraphs", p], 1,
                [p, "paragraphs file of 1073741825 bytes"])


@case
def huge_labels_file(work, ctx):
    p = sparse(os.path.join(work, "labels.txt"))
    return Case(["corpus-stats", ctx.session(), "--run", "r", "--labels", p], 1, [p, "labels file of 1073741825 bytes"])


# ---- arguments ---------------------------------------------------------------------------------

@case
def arg_threads_huge(work, ctx):
    return Case(["trace", DEMO, "--token-ids", "1,2", "--threads", "1000000", "--out", os.path.join(work, "s.h5")],
                2, ["--threads"])


@case
def arg_first_tokens_zero(work, ctx):
    return Case(["analyze", DEMO, "--dynamic", "D3", "--static", "none", "--first-tokens", "0", "--token-ids", "1,2",
                 "--out", os.path.join(work, "s.h5")], 2, ["--first-tokens"])


@case
def arg_prompt_longer_than_positions(work, ctx):
    ids = ",".join(str(3 + i % 4000) for i in range(600))  # the demo model has 512 positions
    return Case(["trace", DEMO, "--token-ids", ids, "--out", os.path.join(work, "s.h5")], 2,
                ["prompt 1 has 600 tokens", "512 positions", "--allow-long"])


@case
def arg_long_text_prompt(work, ctx):
    p = os.path.join(work, "long.txt")
    with open(p, "w") as fh:
        fh.write("word " * 60000 + "\n")
    return Case(["trace", DEMO, "--prompts", p, "--out", os.path.join(work, "s.h5")], 2,
                ["prompt 1 has", "512 positions", "--allow-long"])


# ---- sessions ----------------------------------------------------------------------------------

def session_copy(work, ctx, name="s.h5"):
    p = os.path.join(work, name)
    shutil.copy(ctx.session(), p)
    return p


def h5_edit(path, fn):
    import h5py
    with h5py.File(path, "r+") as f:
        fn(f)


def first_moe_layer(f):
    return sorted(f["runs/r/layers"].keys(), key=int)[0]


def replace_dataset(f, path, data, **kw):
    del f[path]
    f.create_dataset(path, data=data, **kw)


def verify(p):
    return ["session", p, "--verify"]


@case
def ses_config_not_json(work, ctx):
    p = session_copy(work, ctx)
    h5_edit(p, lambda f: f["model"].attrs.modify("config_json", "{\"model_type\": "))
    return Case(verify(p), 1, [p, "/model@config_json", "JSON"])


@case
def ses_config_other_model_type(work, ctx):
    p = session_copy(work, ctx)

    def fn(f):
        c = json.loads(f["model"].attrs["config_json"])
        c["model_type"] = "qwen2_moe"
        f["model"].attrs.modify("config_json", json.dumps(c))

    h5_edit(p, fn)
    return Case(verify(p), 1, [p, "/model@config_json", "model_type"])


@case
def ses_config_deep(work, ctx):
    p = session_copy(work, ctx)
    h5_edit(p, lambda f: f["model"].attrs.modify("config_json", '{"a": ' + deep(100000) + "}"))
    return Case(["session", p, "--json"], 1, [p, "/model@config_json", "nested deeper"])


def topk_ids_case(work, ctx, value, argv):
    p = session_copy(work, ctx)
    where = {}

    def fn(f):
        L = first_moe_layer(f)
        where["path"] = f"/runs/r/layers/{L}/topk_experts"
        a = f[where["path"]][()]
        a[1, 0] = value
        replace_dataset(f, where["path"], a)

    h5_edit(p, fn)
    return Case(argv(p), 1, [p, where["path"], "expert id"])


@case
def ses_topk_id_negative(work, ctx):
    return topk_ids_case(work, ctx, -1, verify)


@case
def ses_topk_id_too_large(work, ctx):
    return topk_ids_case(work, ctx, 99, verify)


@case
def ses_topk_id_in_routing_text(work, ctx):
    return topk_ids_case(work, ctx, -1, lambda p: ["export", p, "--view", "routing-text", "--run", "r", "--out",
                                                   os.path.join(work, "t.csv")])


@case
def ses_topk_ids_unsigned(work, ctx):
    p = session_copy(work, ctx)
    where = {}

    def fn(f):
        L = first_moe_layer(f)
        where["path"] = f"/runs/r/layers/{L}/topk_experts"
        replace_dataset(f, where["path"], f[where["path"]][()].astype(np.uint32))

    h5_edit(p, fn)
    return Case(["session", p, "--json"], 1, [p, where["path"], "element type"])


@case
def ses_token_ids_negative(work, ctx):
    p = session_copy(work, ctx)

    def fn(f):
        a = f["runs/r/tokens"][()]
        a[0] = -3
        replace_dataset(f, "runs/r/tokens", a)

    h5_edit(p, fn)
    return Case(verify(p), 1, [p, "/runs/r/tokens", "token id"])


@case
def ses_hidden_size_negative(work, ctx):
    p = session_copy(work, ctx)
    h5_edit(p, lambda f: f["model"].attrs.modify("hidden_size", np.int64(-1)))
    return Case(["session", p, "--json"], 1, [p, "/model@hidden_size"])


@case
def ses_missing_run_attribute(work, ctx):
    p = session_copy(work, ctx)
    h5_edit(p, lambda f: f["runs/r"].attrs.__delitem__("device"))
    return Case(["session", p, "--json"], 1, [p, "/runs/r@device", "missing"])


@case
def ses_missing_result_attribute(work, ctx):
    p = session_copy(work, ctx)
    h5_edit(p, lambda f: f["analyses/routing_map/r"].attrs.__delitem__("params_json"))
    return Case(["session", p, "--json"], 1, [p, "/analyses/routing_map/r@params_json", "missing"])


@case
def ses_routing_map_shape(work, ctx):
    p = session_copy(work, ctx)
    where = {}

    def fn(f):
        g = f["analyses/routing_map/r/layers"]
        L = sorted(g.keys(), key=int)[0]
        where["path"] = f"/analyses/routing_map/r/layers/{L}/weights"
        a = g[L]["weights"][()]
        replace_dataset(f, where["path"], np.concatenate([a, a[:, :3]], axis=1))

    h5_edit(p, fn)
    return Case(verify(p), 1, [p, where["path"], "tokens"])


@case
def ses_routing_map_layer_out_of_range(work, ctx):
    p = session_copy(work, ctx)

    def fn(f):
        g = f["analyses/routing_map/r/layers"]
        L = sorted(g.keys(), key=int)[0]
        g.move(L, "77")

    h5_edit(p, fn)
    return Case(verify(p), 1, [p, "/analyses/routing_map/r/layers/77", "layer"])


@case
def ses_huge_declared_array(work, ctx):
    p = session_copy(work, ctx)

    def fn(f):
        g = f["analyses/routing_map/r/layers"]
        L = sorted(g.keys(), key=int)[0]
        del g[L]["weights"]
        g[L].create_dataset("weights", shape=(8, 2**34), dtype="f4", chunks=(8, 1024))

    h5_edit(p, fn)
    return Case(["session", p, "--json"], 1, [p, "/weights", "stored"])


def damaged_bytes(path, signature, deltas, value=0xFF):
    """Overwrites bytes at `deltas` past the first HDF5 structure with `signature` (b"GCOL": a
    global heap collection, where variable-length strings live; b"FHDB": a fractal heap's direct
    block, where a group's links live once it has many)."""
    data = bytearray(open(path, "rb").read())
    at = data.find(signature)
    assert at >= 0, f"no {signature!r} in {path}"
    for d in deltas:
        data[at + d] = value
    open(path, "wb").write(bytes(data))


SESSION_READERS = {
    "json": lambda p, w: ["session", p, "--json"],
    "list": lambda p, w: ["export", p, "--list"],
    "export": lambda p, w: ["export", p, "--view", "routing-map", "--run", "r", "--out", os.path.join(w, "m.csv")],
    "append": lambda p, w: ["trace", DEMO, "--token-ids", "1,2,3", "--run", "again", "--out", p],
}


def damaged_session_case(work, ctx, signature, deltas, reader):
    p = session_copy(work, ctx)
    damaged_bytes(p, signature, deltas)
    return Case(SESSION_READERS[reader](p, work), 1, [p])


for _reader in SESSION_READERS:
    for _sig, _tag, _deltas in ((b"GCOL", "global_heap", [16, 17, 18, 19, 24, 25]),
                                (b"FHDB", "link_storage", [20, 21, 22, 23, 30, 31])):
        def _make(work, ctx, _s=_sig, _d=_deltas, _r=_reader):
            return damaged_session_case(work, ctx, _s, _d, _r)
        CASES[f"ses_damaged_{_tag}_{_reader}"] = _make


def global_heap_objects(data):
    """(offset, heap index, size) of each object of the file's first global heap collection, up to
    and including the free-space object (index 0)."""
    g = data.find(b"GCOL")
    end = g + struct.unpack("<Q", data[g + 8:g + 16])[0]
    p, objs = g + 16, []
    while p < end:
        idx = struct.unpack("<H", data[p:p + 2])[0]
        size = struct.unpack("<Q", data[p + 8:p + 16])[0]
        objs.append((p, idx, size))
        if idx == 0:
            break
        p += 16 + (size + 7) // 8 * 8
    return objs


def hung_session_case(work, ctx, argv):
    """One byte of a global-heap object's size (1 -> 257), the libFuzzer session target's timeout
    class: the HDF5 library then loops forever reading the file's attribute strings, doing no I/O.
    The object is the fifth before the free space, a one-byte string of the session's runs; in
    this layout that is an input the library hangs on (the needle says so if the layout moves)."""
    p = session_copy(work, ctx)
    data = bytearray(open(p, "rb").read())
    at, idx, size = global_heap_objects(data)[-6]
    assert idx != 0 and size == 1, (idx, size)
    data[at + 9] += 1
    open(p, "wb").write(bytes(data))
    return Case(argv(p), 1, [p, "stopped making progress"])


@case
def ses_hang_global_heap_json(work, ctx):
    return hung_session_case(work, ctx, lambda p: ["session", p, "--json"])


@case
def ses_hang_global_heap_verify(work, ctx):
    return hung_session_case(work, ctx, lambda p: ["session", p, "--verify"])


# ---- non-finite weights ------------------------------------------------------------------------

def nan_weights_case(work, tensor, needles):
    """The demo checkpoint with NaN in `tensor`: the run completes (exit 0) and says so."""
    def mutate(h, blob):
        j = json.loads(h)
        b, e = j[tensor]["data_offsets"]
        assert j[tensor]["dtype"] == "BF16"
        a = np.frombuffer(blob[b:e], dtype="<u2").copy()
        a[::7] = 0x7FC0  # a bfloat16 NaN
        return h, blob[:b] + a.tobytes() + blob[e:]

    d, st = st_case(work, mutate)
    return Case(["trace", d, "--token-ids", "1,2,3,4", "--out", os.path.join(work, "s.h5")], 0,
                ["warning", tensor, "not finite", *needles])


@case
def nan_router_weights(work, ctx):
    return nan_weights_case(work, "model.layers.2.block_sparse_moe.gate.weight", ["layer 2: the router's logits are not finite"])


@case
def nan_expert_weights(work, ctx):
    return nan_weights_case(work, "model.layers.1.block_sparse_moe.experts.3.w2.weight", [])

"""expertscope-cli contract: info --json, the trace part of the session (read with h5py alone),
and bad input: every case exits non-zero with a message naming the file and the field."""
import hashlib
import json
import os
import shutil
import struct

import numpy as np
import pytest

from conftest import require, run_cli
import fixtures


@pytest.fixture(scope="module")
def mixtral(build_fixture):
    return build_fixture("mixtral_gqa")


@pytest.fixture(scope="module")
def qwen2moe(build_fixture):
    return build_fixture("qwen2_moe_shared")


def test_info_json(cli, mixtral, qwen2moe):
    for (per, packed, ref), expect_moe in ((mixtral, [0, 1]), (qwen2moe, [0, 1, 3])):
        cfg = json.load(open(os.path.join(per, "config.json")))
        infos = [json.loads(run_cli(cli, "info", d, "--json").stdout) for d in (per, packed)]
        for info in infos:
            assert info["model_type"] == cfg["model_type"]
            assert info["num_layers"] == cfg["num_hidden_layers"]
            assert info["moe_layers"] == expect_moe == list(ref["moe_layers"])
            assert info["top_k"] == cfg["num_experts_per_tok"]
            assert info["hidden_size"] == cfg["hidden_size"]
            assert info["dtype"] == "F32"
        assert infos[0]["expert_layout"] == "per-expert" and infos[1]["expert_layout"] == "packed"
        # parameter counts against the HF model itself
        model = fixtures.build_model("mixtral_gqa" if expect_moe == [0, 1] else "qwen2_moe_shared")
        total = sum(p.numel() for p in model.parameters())
        assert infos[0]["total_params"] == infos[1]["total_params"] == total
        E, k = infos[0]["num_experts"], infos[0]["top_k"]
        F, d = infos[0]["expert_intermediate_size"], infos[0]["hidden_size"]
        assert infos[0]["active_params"] == total - len(expect_moe) * (E - k) * 3 * F * d
        # the fingerprint ignores the layout's file names but not the content
        assert infos[0]["fingerprint"].startswith("sha256:")


def test_fingerprint_moves_with_copy_and_changes_with_content(cli, mixtral, tmp_path):
    per = mixtral[0]
    moved = tmp_path / "moved"
    shutil.copytree(per, moved)
    fp = lambda d: json.loads(run_cli(cli, "info", d, "--json").stdout)["fingerprint"]
    assert fp(per) == fp(moved)
    # a "fine-tune": same shapes, one tensor's first bytes changed
    st = moved / "model.safetensors"
    data = bytearray(st.read_bytes())
    (n,) = struct.unpack("<Q", data[:8])
    header = json.loads(data[8:8 + n])
    off = 8 + n + header["model.layers.1.block_sparse_moe.experts.3.w2.weight"]["data_offsets"][0]
    data[off:off + 4] = struct.pack("<f", 0.123)
    st.write_bytes(bytes(data))
    assert fp(per) != fp(moved)


def test_session_layout_with_h5py(cli, qwen2moe, tmp_path):
    h5py = require("h5py")
    per, packed, ref = qwen2moe
    out = tmp_path / "s.h5"
    ids = [[1, 2, 3, 4], [5, 6, 7]]
    args = ["trace", per, "--out", out, "--all-experts", "--save-logits", "--run", "first"]
    for p in ids:
        args += ["--token-ids", ",".join(map(str, p))]
    run_cli(cli, *args)
    run_cli(cli, "trace", per, "--out", out, "--token-ids", "9,8", "--run", "second")
    cfg = json.load(open(os.path.join(per, "config.json")))
    info = json.loads(run_cli(cli, "info", per, "--json").stdout)
    with h5py.File(out, "r") as f:
        assert f.attrs["format"] == "expertscope-session"
        assert int(f.attrs["format_version"]) == 4
        m = f["model"].attrs
        assert m["model_type"] == "qwen2_moe"
        assert int(m["num_layers"]) == 4 and int(m["num_experts"]) == 6 and int(m["top_k"]) == 2
        assert int(m["hidden_size"]) == 64
        assert json.loads(m["config_json"]) == cfg
        assert m["checkpoint_path"] == os.path.abspath(per)
        assert m["fingerprint"] == info["fingerprint"]
        assert sorted(f["runs"].keys()) == ["first", "second"]
        r = f["runs/first"]
        assert r.attrs["device"] == "cpu" and r.attrs["dtype"] == "float32"
        T = 7
        assert r["tokens"].dtype == np.int64 and list(r["tokens"][:]) == [1, 2, 3, 4, 5, 6, 7]
        assert r["prompt_offsets"].dtype == np.int64 and list(r["prompt_offsets"][:]) == [0, 4, 7]
        assert sorted(r["layers"].keys(), key=int) == ["0", "1", "3"]
        for l in ("0", "1", "3"):
            g = r["layers"][l]
            assert g["router_logits"].dtype == np.float32 and g["router_logits"].shape == (T, 6)
            assert g["topk_experts"].dtype == np.int32 and g["topk_experts"].shape == (T, 2)
            assert g["topk_weights"].dtype == np.float32 and g["topk_weights"].shape == (T, 2)
            assert g["expert_output_norms"].dtype == np.float32 and g["expert_output_norms"].shape == (T, 6)
            assert g["shared_output_norms"].dtype == np.float32 and g["shared_output_norms"].shape == (T,)
            w = g["topk_weights"][:]
            assert (np.diff(w, axis=1) <= 0).all(), "ids must be ordered by weight, descending"
        assert r["logits"].dtype == np.float32 and r["logits"].shape == (T, cfg["vocab_size"])
        s = f["runs/second"]
        assert "logits" not in s and "expert_output_norms" not in s["layers/1"]


def sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def test_existing_run_name_and_foreign_session_leave_file_untouched(cli, mixtral, qwen2moe, tmp_path):
    out = tmp_path / "s.h5"
    run_cli(cli, "trace", mixtral[0], "--out", out, "--token-ids", "1,2,3", "--run", "a")
    before = sha(out)
    r = run_cli(cli, "trace", mixtral[0], "--out", out, "--token-ids", "4,5", "--run", "a", check=False)
    assert r.returncode == 1 and "/runs/a" in r.stderr and str(out) in r.stderr
    r = run_cli(cli, "trace", qwen2moe[0], "--out", out, "--token-ids", "4,5", "--run", "b", check=False)
    assert r.returncode == 1 and "/model/fingerprint" in r.stderr
    assert sha(out) == before
    assert [p for p in os.listdir(tmp_path) if p != "s.h5"] == []  # no temporary file left behind
    # a default run name never collides
    run_cli(cli, "trace", mixtral[0], "--out", out, "--token-ids", "4,5")
    run_cli(cli, "trace", mixtral[0], "--out", out, "--token-ids", "4,5")
    h5py = require("h5py")
    with h5py.File(out, "r") as f:
        assert sorted(f["runs"].keys()) == ["a", "run0", "run1"]


def test_not_a_session(cli, mixtral, tmp_path):
    bogus = tmp_path / "x.h5"
    bogus.write_bytes(b"this is not hdf5")
    r = run_cli(cli, "trace", mixtral[0], "--out", bogus, "--token-ids", "1", check=False)
    assert r.returncode == 1 and str(bogus) in r.stderr
    assert bogus.read_bytes() == b"this is not hdf5"


# ---- bad input -------------------------------------------------------------------------------

def write_st(path, tensors, raw_header=None, pad_data=b""):
    """tensors: name -> (dtype, shape, bytes). Offsets laid out in order unless raw_header."""
    header, blob = {}, b""
    for name, (dt, shape, data) in tensors.items():
        header[name] = {"dtype": dt, "shape": shape, "data_offsets": [len(blob), len(blob) + len(data)]}
        blob += data
    h = json.dumps(raw_header if raw_header is not None else header).encode()
    h += b" " * ((8 - len(h) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(h)) + h + blob + pad_data)


def copy_ckpt(src, dst):
    shutil.copytree(src, dst)
    return dst


def read_st(path):
    data = open(path, "rb").read()
    (n,) = struct.unpack("<Q", data[:8])
    return json.loads(data[8:8 + n]), data[8 + n:]


def rewrite(path, mutate):
    header, blob = read_st(path)
    meta = header.pop("__metadata__", None)
    tensors = {k: (v["dtype"], v["shape"], blob[v["data_offsets"][0]:v["data_offsets"][1]]) for k, v in header.items()}
    mutate(tensors)
    write_st(path, tensors)
    del meta


def expect_error(cli, args, *needles):
    r = run_cli(cli, *args, check=False)
    assert r.returncode == 1, (r.returncode, r.stderr)
    for n in needles:
        assert str(n) in r.stderr, f"{n!r} not in: {r.stderr}"
    assert "Traceback" not in r.stderr and "terminate called" not in r.stderr
    return r.stderr


def test_truncated_file(cli, mixtral, tmp_path):
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    st = d / "model.safetensors"
    data = st.read_bytes()
    st.write_bytes(data[: len(data) - 1000])
    expect_error(cli, ["info", d], st, "outside the data", "truncated")
    st.write_bytes(data[:5])
    expect_error(cli, ["info", d], st, "header length", "truncated")


def test_header_length_past_end(cli, mixtral, tmp_path):
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    st = d / "model.safetensors"
    data = bytearray(st.read_bytes())
    data[:8] = struct.pack("<Q", len(data) + 10)
    st.write_bytes(bytes(data))
    expect_error(cli, ["info", d], st, "header length", "past the end")


def test_header_not_json(cli, tmp_path):
    st = tmp_path / "x.safetensors"
    st.write_bytes(struct.pack("<Q", 8) + b"{not js}")
    expect_error(cli, ["info", st], st, "header", "JSON")


def test_span_out_of_bounds(cli, mixtral, tmp_path):
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    st = d / "model.safetensors"
    header, blob = read_st(st)
    header["model.norm.weight"]["data_offsets"][1] = len(blob) + 4096
    header["model.norm.weight"]["data_offsets"][0] = len(blob) + 4096 - 256
    write_raw = json.dumps(header).encode()
    st.write_bytes(struct.pack("<Q", len(write_raw)) + write_raw + blob)
    expect_error(cli, ["info", d], st, "model.norm.weight", "outside the data")


def test_overlapping_spans(cli, mixtral, tmp_path):
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    st = d / "model.safetensors"
    header, blob = read_st(st)
    a = header["model.norm.weight"]
    b = header["model.layers.0.input_layernorm.weight"]
    b["data_offsets"] = list(a["data_offsets"])  # same shape and dtype: the two spans coincide
    raw = json.dumps(header).encode()
    st.write_bytes(struct.pack("<Q", len(raw)) + raw + blob)
    expect_error(cli, ["info", d], st, "overlaps")


def test_shape_does_not_match_span(cli, tmp_path):
    st = tmp_path / "x.safetensors"
    write_st(st, {"a": ("F32", [3, 3], b"\0" * 36)}, raw_header={"a": {"dtype": "F32", "shape": [4, 3], "data_offsets": [0, 36]}})
    expect_error(cli, ["info", st], st, "'a'", "span holds 36")


def test_wrong_shape_for_config(cli, mixtral, tmp_path):
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    name = "model.layers.1.block_sparse_moe.experts.2.w1.weight"
    rewrite(d / "model.safetensors", lambda t: t.__setitem__(name, ("F32", [95, 64], b"\0" * (95 * 64 * 4))))
    expect_error(cli, ["info", d], "model.safetensors", name, "[95, 64]", "[96, 64]")


def test_unsupported_dtype(cli, mixtral, tmp_path):
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    rewrite(d / "model.safetensors", lambda t: t.__setitem__("model.norm.weight", ("I64", [64], b"\0" * 512)))
    expect_error(cli, ["info", d], "model.safetensors", "model.norm.weight", "I64")


def test_missing_tensor(cli, mixtral, tmp_path):
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    name = "model.layers.0.block_sparse_moe.experts.1.w3.weight"
    rewrite(d / "model.safetensors", lambda t: t.pop(name))
    expect_error(cli, ["info", d], d, name, "missing")


def test_extra_tensor(cli, mixtral, tmp_path):
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    rewrite(d / "model.safetensors", lambda t: t.__setitem__("model.layers.0.mystery.weight", ("F32", [2], b"\0" * 8)))
    expect_error(cli, ["info", d], "model.safetensors", "model.layers.0.mystery.weight", "not recognised")


@pytest.mark.parametrize("key", ["hidden_size", "num_local_experts", "num_experts_per_tok", "vocab_size", "model_type"])
def test_config_missing_key(cli, mixtral, tmp_path, key):
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    cfg = json.load(open(d / "config.json"))
    cfg.pop(key)
    json.dump(cfg, open(d / "config.json", "w"))
    expect_error(cli, ["info", d], d / "config.json", key, "missing")


def test_config_not_json(cli, mixtral, tmp_path):
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    (d / "config.json").write_text('{"model_type": "mixtral", ')
    expect_error(cli, ["info", d], d / "config.json", "JSON")


def test_unknown_model_type(cli, mixtral, tmp_path):
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    cfg = json.load(open(d / "config.json"))
    cfg["model_type"] = "gpt_neox_moe"
    json.dump(cfg, open(d / "config.json", "w"))
    err = expect_error(cli, ["info", d], d / "config.json", "model_type", "gpt_neox_moe")
    for t in ("mixtral", "qwen2_moe", "qwen3_moe", "olmoe", "llama", "mistral", "qwen2"):
        assert t in err


def test_token_id_out_of_range(cli, mixtral, tmp_path):
    out = tmp_path / "s.h5"
    expect_error(cli, ["trace", mixtral[0], "--out", out, "--token-ids", "1,2,97"], "token_ids", "97", "[0, 97)")
    expect_error(cli, ["trace", mixtral[0], "--out", out, "--token-ids", "-1"], "token_ids", "-1")
    assert not out.exists()


def test_sharded_checkpoint_and_bad_index(cli, mixtral, tmp_path):
    """A sharded copy gives the same info and trace; a broken index names the index and the entry."""
    h5py = require("h5py")
    per = mixtral[0]
    d = tmp_path / "sharded"
    d.mkdir()
    shutil.copy(os.path.join(per, "config.json"), d)
    header, blob = read_st(os.path.join(per, "model.safetensors"))
    header.pop("__metadata__", None)
    names = sorted(header)
    shards = [names[: len(names) // 2], names[len(names) // 2:]]
    weight_map = {}
    for i, group in enumerate(shards):
        fn = f"model-{i + 1:05d}-of-00002.safetensors"
        write_st(d / fn, {n: (header[n]["dtype"], header[n]["shape"],
                              blob[header[n]["data_offsets"][0]:header[n]["data_offsets"][1]]) for n in group})
        weight_map.update({n: fn for n in group})
    json.dump({"metadata": {}, "weight_map": weight_map}, open(d / "model.safetensors.index.json", "w"))
    a = json.loads(run_cli(cli, "info", per, "--json").stdout)
    b = json.loads(run_cli(cli, "info", d, "--json").stdout)
    for k in ("model_type", "moe_layers", "total_params", "active_params"):
        assert a[k] == b[k]
    out = tmp_path / "s.h5"
    run_cli(cli, "trace", per, "--out", tmp_path / "a.h5", "--token-ids", "5,6,7,8", "--run", "r")
    run_cli(cli, "trace", d, "--out", out, "--token-ids", "5,6,7,8", "--run", "r")
    with h5py.File(out, "r") as f, h5py.File(tmp_path / "a.h5", "r") as g:
        np.testing.assert_array_equal(f["runs/r/layers/1/topk_experts"][:], g["runs/r/layers/1/topk_experts"][:])
        # the same numbers up to float32 rounding (BLAS kernels depend on the data's alignment)
        np.testing.assert_allclose(f["runs/r/layers/1/router_logits"][:], g["runs/r/layers/1/router_logits"][:],
                                   rtol=0, atol=1e-5)
    # an index entry pointing at a tensor its shard lacks
    weight_map["model.norm.weight"] = "model-00001-of-00002.safetensors" if weight_map["model.norm.weight"].endswith("2.safetensors") else "model-00002-of-00002.safetensors"
    json.dump({"weight_map": weight_map}, open(d / "model.safetensors.index.json", "w"))
    expect_error(cli, ["info", d], "model.safetensors.index.json", "weight_map.model.norm.weight")
    weight_map["model.norm.weight"] = "model-00009-of-00002.safetensors"
    json.dump({"weight_map": weight_map}, open(d / "model.safetensors.index.json", "w"))
    expect_error(cli, ["info", d], "model.safetensors.index.json", "does not exist")


def test_lone_safetensors_file(cli, mixtral, tmp_path):
    """A lone .safetensors file takes its config from the config.json beside it; without one, a clear error."""
    d = tmp_path / "lone"
    d.mkdir()
    shutil.copy(os.path.join(mixtral[0], "model.safetensors"), d / "weights.safetensors")
    expect_error(cli, ["info", d / "weights.safetensors"], "config.json", "no config.json")
    shutil.copy(os.path.join(mixtral[0], "config.json"), d)
    info = json.loads(run_cli(cli, "info", d / "weights.safetensors", "--json").stdout)
    assert info["model_type"] == "mixtral"


def test_usage_errors(cli, mixtral, tmp_path):
    assert run_cli(cli, check=False).returncode == 2
    assert run_cli(cli, "frobnicate", check=False).returncode == 2
    assert run_cli(cli, "trace", mixtral[0], "--token-ids", "1", check=False).returncode == 2  # no --out
    assert run_cli(cli, "trace", mixtral[0], "--out", tmp_path / "s.h5", "--token-ids", "1,x", check=False).returncode == 2
    r = run_cli(cli, "trace", mixtral[0], "--out", tmp_path / "s.h5", "--prompt", "hello", check=False)
    assert r.returncode == 1 and "tokenizer.json" in r.stderr  # this checkpoint has no tokenizer
    r = run_cli(cli, "trace", mixtral[0], "--out", tmp_path / "s.h5", "--token-ids", "1", "--dtype", "int8", check=False)
    assert r.returncode == 1 and "dtype" in r.stderr
    r = run_cli(cli, "trace", mixtral[0], "--out", tmp_path / "s.h5", "--token-ids", "1", "--device", "tpu", check=False)
    assert r.returncode == 1 and "device" in r.stderr
    assert not (tmp_path / "s.h5").exists()


@pytest.mark.parametrize("value", ["0", "-1", "1000000", "x"])
def test_thread_counts_out_of_range_are_usage_errors(cli, mixtral, tmp_path, value):
    """--threads takes 1 .. 4 x the hardware threads: 0, -1 and a million were accepted (a million
    crashed inside OpenMP); now each is a usage error (exit 2) naming the option, and no file."""
    out = tmp_path / "s.h5"
    for args in (["trace", mixtral[0], "--out", out, "--token-ids", "1,2"],
                 ["analyze", mixtral[0], "--out", out, "--static", "S1"]):
        r = run_cli(cli, *args, "--threads", value, check=False)
        assert r.returncode == 2 and "--threads" in r.stderr, r.stderr
        if value != "x":
            assert f"between 1 and {4 * os.cpu_count()}" in r.stderr
    assert not out.exists()
    run_cli(cli, "trace", mixtral[0], "--out", out, "--token-ids", "1,2", "--threads", str(4 * os.cpu_count()))


def test_first_tokens_below_one_is_a_usage_error(cli, mixtral, tmp_path):
    """--first-tokens 0 ended in a LibTorch stack trace with D3; it must be at least 1."""
    out = tmp_path / "s.h5"
    run_cli(cli, "trace", mixtral[0], "--out", out, "--token-ids", "1,2,3", "--run", "r")
    r = run_cli(cli, "analyze", mixtral[0], "--out", out, "--run", "r", "--static", "none", "--dynamic", "D3",
                "--first-tokens", "0", check=False)
    assert r.returncode == 2 and "--first-tokens must be >= 1" in r.stderr


def test_static_backend_without_static_analyses_is_a_usage_error(cli, mixtral, tmp_path):
    """--static-backend with no static analysis asked for was silently ignored (a check of the
    host kernels that never ran); now a usage error naming the option, and the session untouched."""
    out = tmp_path / "s.h5"
    run_cli(cli, "trace", mixtral[0], "--out", out, "--token-ids", "1,2,3", "--run", "r")
    before = out.read_bytes()
    r = run_cli(cli, "analyze", mixtral[0], "--out", out, "--run", "r", "--static", "none", "--dynamic", "D3",
                "--static-backend", "torch", check=False)
    assert r.returncode == 2 and "--static-backend" in r.stderr, r.stderr
    assert out.read_bytes() == before
    run_cli(cli, "analyze", mixtral[0], "--out", out, "--static", "S1", "--static-backend", "torch")


def test_moved_checkpoint_is_relinked_by_fingerprint(cli, mixtral, tmp_path):
    h5py = require("h5py")
    a = tmp_path / "a"
    shutil.copytree(mixtral[0], a)
    out = tmp_path / "s.h5"
    run_cli(cli, "trace", a, "--out", out, "--token-ids", "1,2,3", "--run", "first")
    b = tmp_path / "moved"
    a.rename(b)
    run_cli(cli, "trace", b, "--out", out, "--token-ids", "4,5", "--run", "second")
    j = json.loads(run_cli(cli, "session", out, "--json").stdout)
    assert j["model"]["checkpoint_path"] == str(b)
    assert [r["name"] for r in j["runs"]] == ["first", "second"]
    with h5py.File(out, "r") as f:
        assert list(f["runs/first/tokens"][:]) == [1, 2, 3]


def test_analyze_refuses_what_it_cannot_analyse(cli, build_fixture, mixtral, tmp_path):
    """A dense checkpoint has no MoE layer; PCA takes 2 or 3 components; a session of another
    checkpoint is refused; nothing is written in any case."""
    dense = build_fixture("llama_bias_tied")[0]
    out = tmp_path / "s.h5"
    r = run_cli(cli, "analyze", dense, "--out", out, check=False)
    assert r.returncode == 1 and "dense model" in r.stderr and not out.exists()
    r = run_cli(cli, "analyze", mixtral[0], "--out", out, "--pca-components", "4", check=False)
    assert r.returncode == 1 and "--pca-components" in r.stderr and not out.exists()
    run_cli(cli, "analyze", mixtral[0], "--out", out, "--static", "S4")
    before = sha(out)
    other = build_fixture("qwen2_moe_shared")[0]
    r = run_cli(cli, "analyze", other, "--out", out, "--static", "S4", check=False)
    assert r.returncode == 1 and "/model/fingerprint" in r.stderr and sha(out) == before
    r = run_cli(cli, "analyze", mixtral[0], "--out", out, "--layers", "x", check=False)
    assert r.returncode == 2 and sha(out) == before


def test_non_finite_router_weights_warn_and_are_recorded(cli, mixtral, tmp_path):
    """NaN router weights traced with exit 0 and routed every token alike, silently: now the run
    completes with warnings naming the tensor and the layers, kept in the session (h5py reads them)."""
    h5py = require("h5py")
    d = copy_ckpt(mixtral[0], tmp_path / "c")
    name = "model.layers.1.block_sparse_moe.gate.weight"

    def poison(t):
        dt, shape, data = t[name]
        a = np.frombuffer(data, dtype="<f4").copy()
        a[::5] = np.nan
        t[name] = (dt, shape, a.tobytes())

    rewrite(d / "model.safetensors", poison)
    out = tmp_path / "s.h5"
    r = run_cli(cli, "trace", d, "--out", out, "--token-ids", "1,2,3,4", "--run", "r")
    assert f"warning: tensor '{name}'" in r.stderr and "layer 1: the router's logits are not finite" in r.stderr
    runs = json.loads(run_cli(cli, "session", out, "--json").stdout)["runs"]
    assert any(name in w for w in runs[0]["warnings"])
    with h5py.File(out, "r") as f:
        stored = [w.decode() if isinstance(w, bytes) else w for w in f["runs/r"].attrs["warnings"]]
    assert stored == runs[0]["warnings"]
    # a clean checkpoint's run has none
    run_cli(cli, "trace", mixtral[0], "--out", tmp_path / "clean.h5", "--token-ids", "1,2,3,4", "--run", "r")
    assert json.loads(run_cli(cli, "session", tmp_path / "clean.h5", "--json").stdout)["runs"][0]["warnings"] == []


def test_profile_variable_records_the_trace(cli, mixtral, tmp_path):
    """EXPERTSCOPE_PROFILE=FILE: LibTorch's profiler records the trace's forward into FILE, a Chrome
    trace of its operators that tests/bench/profile_summary.py sums up; the run is saved as usual."""
    import subprocess
    import sys
    prof = tmp_path / "p.json"
    out = tmp_path / "s.h5"
    env = dict(os.environ, EXPERTSCOPE_PROFILE=str(prof))
    r = subprocess.run([cli, "trace", mixtral[0], "--out", str(out), "--token-ids", "1,2,3,4", "--run", "r"],
                       capture_output=True, text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    ops = {e["name"] for e in json.load(open(prof))["traceEvents"] if e.get("cat") == "cpu_op"}
    assert {"aten::linear", "aten::bincount", "aten::scaled_dot_product_attention"} <= ops, sorted(ops)[:20]
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "bench"))
    import profile_summary
    text = profile_summary.summary(str(prof))
    assert text.startswith("span ") and "cpu_op:" in text and "aten::linear" in text, text
    assert json.loads(run_cli(cli, "session", out, "--json").stdout)["runs"][0]["name"] == "r"

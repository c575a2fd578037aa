"""compressed-tensors pack-quantized checkpoints (quant_method "compressed-tensors", format
"pack-quantized": Kimi K2 Thinking / K2.5's INT4 experts, llm-compressor's W4A16 and W8A16)
against transformers loading the same files through its compressed-tensors integration.

The files are written by compressed-tensors itself (fixtures.write_packed_ints: its min-max
observer's scales per group or per row, its quantize and pack_to_int32), three schemes:
- Kimi's: the routed experts only, 4 bits in groups of 32, bf16 scales (DeepSeek-V3's fixture);
- 8 bits per row with float32 scales on every linear weight of the decoder layers, attention
  included, the router and the head not (Qwen3-MoE's);
- 4 bits in groups of 16 with f16 scales on the same weights.

transformers dequantizes a weight as the code times its scale in the scale's dtype, then casts it to
the model's; loaded with dtype=float32 it keeps the dequantized experts in the scales' dtype and
casts the activations to it, so the float32 reference is that model with every parameter in float32
(the same dequantized values, computed in float32, as the FP8 tests' reference). The half-precision
references are the models as transformers loads them in that dtype.
"""
import json
import subprocess

import numpy as np
import pytest

from conftest import require, run_cli
import fixtures
from test_parity import (BF16_TOL, F16_TOL, assert_dynamic_analyses_run, assert_identical,
                         compare_resident_and_streamed, trace, trace_and_compare)

torch = require("torch")


EVERY_LINEAR_IGNORE = ["lm_head", "re:.*mlp.gate$"]
# name -> (base fixture, its overrides, which weights, bits, group, scale dtype, ignore)
CASES = {
    "deepseek_v3_int4_g32_bf16": ("deepseek_v3_groups", dict(moe_intermediate_size=32), fixtures.routed_experts, 4, 32,
                                  torch.bfloat16, None),
    "qwen3_moe_int8_channel_f32": ("qwen3_moe_headdim", {}, fixtures.every_linear, 8, None, torch.float32,
                                   EVERY_LINEAR_IGNORE),
    "qwen3_moe_int4_g16_f16": ("qwen3_moe_headdim", {}, fixtures.every_linear, 4, 16, torch.float16,
                               EVERY_LINEAR_IGNORE),
}


def build(name, root):
    """(the packed checkpoint's dir, its packed weight count) of CASES[name] under root."""
    base, overrides, which, bits, group, sdt, ignore = CASES[name]
    return fixtures.packed_ints_checkpoint(base, root, which, bits, group, sdt, ignore, **overrides)


@pytest.fixture(scope="module")
def packed(tmp_path_factory):
    require("transformers")
    require("compressed_tensors")
    root = tmp_path_factory.mktemp("ct")
    built = {}

    def get(name):
        if name not in built:
            built[name] = build(name, str(root / name))
        return built[name]

    return get


@pytest.mark.parametrize("name", list(CASES))
def test_packed_ints_parity_cpu_float32(cli, packed, tmp_path, name):
    """Every scheme in float32, resident and layer-streamed, against transformers' dequantized model
    in float32; info names the scheme and counts the packed weights."""
    ckpt, n = packed(name)
    _, _, _, bits, group, _, _ = CASES[name]
    info = json.loads(run_cli(cli, "info", ckpt, "--json").stdout)
    assert info["quantization"] == {"method": "compressed-tensors", "format": "pack-quantized", "num_bits": bits,
                                    "group_size": group, "quantized_tensors": n} and n > 0
    assert f"INT{bits}" in run_cli(cli, "info", ckpt).stdout
    ref = fixtures.reference(fixtures.packed_ints_reference_float32(ckpt))
    compare_resident_and_streamed(cli, ckpt, str(tmp_path / "s.h5"), ref)


def test_packed_ints_bit_identical_in_bfloat16(cli, packed, tmp_path):
    """Kimi's scheme in bf16: the experts dequantized in bf16 (the code times its bf16 scale, rounded
    once) give transformers' routing and logits in bf16 bit for bit, its expert output norms within a
    bf16 step (test_parity's whole-run rule)."""
    h5py = require("h5py")
    ckpt, _ = packed("deepseek_v3_int4_g32_bf16")
    ref = fixtures.reference(fixtures.hf_from_pretrained(ckpt, torch.bfloat16))
    out = str(tmp_path / "s.h5")
    trace(cli, ckpt, out, "--dtype", "bfloat16", "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        assert_identical(f["runs/r"], ref)
        for l in ref["moe_layers"]:
            np.testing.assert_allclose(f[f"runs/r/layers/{l}/expert_output_norms"][:],
                                       ref[f"L{l}_expert_output_norms"], rtol=2 ** -8, atol=0)


@pytest.mark.parametrize("name,dtype", [("qwen3_moe_int4_g16_f16", "float16"),
                                        ("qwen3_moe_int8_channel_f32", "bfloat16")])
def test_packed_ints_half_precision(cli, packed, tmp_path, name, dtype):
    """f16 scales in a float16 run and float32 scales in a bf16 run, against transformers in that dtype
    on the dequantized weights (the float32 reference's, saved and loaded in that dtype), test_parity's
    half-precision tolerances. (Where the scales' dtype is the run's, that is the model transformers
    loads from the packed files. Loading float32 scales in bf16, transformers keeps the dequantized
    experts in float32 and runs them there, and rounds the dense layers' scales to bf16 before the
    product: not the checkpoint's weights in bf16.)"""
    ckpt, _ = packed(name)
    deq = fixtures.save_dequantized(fixtures.packed_ints_reference_float32(ckpt), str(tmp_path / "dequantized"))
    ref = fixtures.reference(fixtures.hf_from_pretrained(deq, getattr(torch, dtype)))
    trace_and_compare(cli, ckpt, str(tmp_path / "s.h5"), ref, "--dtype", dtype,
                      **(BF16_TOL if dtype == "bfloat16" else F16_TOL))


def test_weight_shape_as_int32(cli, packed, tmp_path):
    """weight_shape stored as I32 (as some releases store it) reads as the I64 one does."""
    ckpt, _ = packed("deepseek_v3_int4_g32_bf16")

    def to_i32(sd):
        for k in [k for k in sd if k.endswith(".weight_shape")]:
            sd[k] = sd[k].to(torch.int32)

    d = fixtures.copy_checkpoint(ckpt, str(tmp_path / "i32"), None, to_i32)
    ref = fixtures.reference(fixtures.packed_ints_reference_float32(ckpt))
    trace_and_compare(cli, d, str(tmp_path / "s.h5"), ref)


def refused(cli, ckpt, words):
    r = subprocess.run([cli, "info", ckpt], capture_output=True, text=True)
    assert r.returncode == 1, r.stdout + r.stderr
    for w in words:
        assert w in r.stderr, (w, r.stderr)


def _scheme(c):
    return c["quantization_config"]["config_groups"]["group_0"]["weights"]


def _group(c):
    return c["quantization_config"]["config_groups"]["group_0"]


BAD_CONFIG = [
    (lambda c: _scheme(c).update(num_bits=3), ["num_bits", "must be 4 or 8"]),
    (lambda c: _scheme(c).update(symmetric=False), ["symmetric", "zero points"]),
    (lambda c: _scheme(c).update(type="float"), ["type", "int"]),
    (lambda c: _scheme(c).update(actorder="group"), ["actorder", "weight_g_idx"]),
    (lambda c: _scheme(c).update(strategy="tensor"), ["strategy", "tensor"]),
    (lambda c: _scheme(c).update(strategy="block", block_structure=[32, 32]), ["block_structure"]),
    (lambda c: _scheme(c).update(dynamic=True), ["dynamic"]),
    (lambda c: _group(c).update(input_activations={"num_bits": 8, "type": "float"}), ["input_activations"]),
    (lambda c: c["quantization_config"].update(format="float-quantized"), ["format", "float-quantized"]),
    (lambda c: c["quantization_config"].update(kv_cache_scheme={"num_bits": 8}), ["kv_cache_scheme"]),
    (lambda c: c["quantization_config"]["config_groups"].update(group_1=_group(c)), ["group_1", "one weight scheme"]),
    (lambda c: c["quantization_config"].update(quant_method="awq"), ["quant_method", "awq"]),
    (lambda c: c.pop("quantization_config"), ["weight_packed", "compressed-tensors"]),
    # a scheme whose groups do not tile the rows (the experts' rows of 64 values)
    (lambda c: _scheme(c).update(group_size=48), ["weight_packed", "groups of 48"]),
]


@pytest.mark.parametrize("i", range(len(BAD_CONFIG)))
def test_bad_quantization_config_refused(cli, packed, tmp_path, i):
    """What transformers would run otherwise (quantized activations or cache, zero points, reordered
    columns, other formats) or what the files cannot be under the config is refused by name."""
    ckpt, _ = packed("deepseek_v3_int4_g32_bf16")
    edit, words = BAD_CONFIG[i]
    refused(cli, fixtures.copy_checkpoint(ckpt, str(tmp_path / "bad"), edit), ["config.json"] + words)


ACCEPTED = [
    # compressed-tensors writes empty sparsity and transform configs where there are none
    ("deepseek_v3_int4_g32_bf16", lambda c: c["quantization_config"].update(sparsity_config={}, transform_config={})),
    # its enums read case-insensitively; actorder false is none; "weight" changes the calibration only
    ("deepseek_v3_int4_g32_bf16", lambda c: _scheme(c).update(strategy="GROUP", type="INT", actorder=False)),
    ("deepseek_v3_int4_g32_bf16", lambda c: _scheme(c).update(actorder="weight")),
    # without a strategy, groups where group_size is positive, a scale per row where it is -1
    ("deepseek_v3_int4_g32_bf16", lambda c: _scheme(c).pop("strategy")),
    ("qwen3_moe_int8_channel_f32", lambda c: (_scheme(c).pop("strategy"), _scheme(c).update(group_size=-1))),
]


@pytest.mark.parametrize("i", range(len(ACCEPTED)))
def test_equivalent_quantization_configs_accepted(cli, packed, tmp_path, i):
    """Spellings of the same scheme that compressed-tensors reads as it (as current llm-compressor
    files write them) open, read as the scheme they name."""
    name, edit = ACCEPTED[i]
    ckpt, _ = packed(name)
    want = json.loads(run_cli(cli, "info", ckpt, "--json").stdout)["quantization"]
    d = fixtures.copy_checkpoint(ckpt, str(tmp_path / "same"), edit)
    assert json.loads(run_cli(cli, "info", d, "--json").stdout)["quantization"] == want


W = "model.layers.1.mlp.experts.2.up_proj.weight"
ROUTER = "model.layers.1.mlp.gate.weight"


def _packed_router(sd):
    """the router stored as packed integers (an expert's, renamed)"""
    sd.pop(ROUTER)
    for leaf in ("_packed", "_scale", "_shape"):
        sd[ROUTER + leaf] = sd.pop(W + leaf)
BAD_TENSORS = [
    (lambda sd: sd.update({W + "_packed": sd[W + "_packed"][:, :-1].contiguous()}), [W + "_packed", "words"]),
    (lambda sd: sd.update({W + "_packed": sd[W + "_packed"].to(torch.int64)}), [W + "_packed", "I64", "not I32"]),
    (lambda sd: sd.update({W + "_scale": sd[W + "_scale"][:, :1].contiguous()}), [W + "_scale", "groups of 32"]),
    (lambda sd: sd.update({W + "_scale": sd[W + "_scale"].to(torch.int32)}), [W + "_scale", "I32"]),
    (lambda sd: sd.update({W + "_shape": torch.tensor([32, 32])}), [W + "_shape", "[32, 32]", "[32, 64]"]),
    (lambda sd: sd.update({W + "_shape": torch.tensor([32.0, 64.0])}), [W + "_shape", "two integers"]),
    (lambda sd: sd.pop(W + "_scale"), [W + "_scale", "missing scale"]),
    (lambda sd: sd.pop(W + "_shape"), [W + "_shape", "missing shape"]),
    (lambda sd: sd.pop(W + "_packed"), [W, "missing tensor"]),
    # the router, the embeddings and the head stay plain in every released scheme
    (_packed_router, [ROUTER + "_packed", "linear layers of attention and the MLPs"]),
]


@pytest.mark.parametrize("i", range(len(BAD_TENSORS)))
def test_bad_packed_tensors_refused(cli, packed, tmp_path, i):
    """A packed weight whose words, scales or stored shape do not fit the config's weight is refused
    by name before anything is decoded."""
    ckpt, _ = packed("deepseek_v3_int4_g32_bf16")
    edit, words = BAD_TENSORS[i]
    refused(cli, fixtures.copy_checkpoint(ckpt, str(tmp_path / "bad"), None, edit), words)


def test_dynamic_analyses_on_packed_experts(cli, packed, tmp_path):
    """The dynamic analyses run on a packed model (the static ones are checked against numpy on the
    dequantized weights in tests/analysis/test_analyses.py)."""
    ckpt, _ = packed("qwen3_moe_int4_g16_f16")
    assert_dynamic_analyses_run(cli, ckpt, str(tmp_path / "s.h5"))


def test_layer_streaming_weighs_the_decoded_weights(cli, packed, tmp_path):
    """--layer-streaming auto weighs packed integers as the weights they decode to (32 / bits values
    a word, float32 here): a device that holds the packed words but not the decoded model streams,
    one that holds the decoded model does not."""
    import math
    import os
    from safetensors import safe_open
    ckpt, _ = packed("qwen3_moe_int4_g16_f16")
    with safe_open(os.path.join(ckpt, "model.safetensors"), "pt") as f:
        words = sum(math.prod(f.get_slice(k).get_shape()) for k in f.keys() if k.endswith(".weight_packed"))
    decoded = words * 8 * 4

    def streamed(mem):
        env = dict(os.environ, EXPERTSCOPE_DEVICE_MEMORY=str(mem))
        r = subprocess.run([cli, "trace", ckpt, "--out", str(tmp_path / f"{mem}.h5"), "--token-ids", "1,2,3"],
                           capture_output=True, text=True, env=env)
        assert r.returncode == 0, r.stderr
        return "layer-streamed" in r.stderr

    assert streamed(decoded)  # the packed words are an eighth of it
    assert not streamed(4 * decoded)

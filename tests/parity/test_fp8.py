"""FP8 block-scaled checkpoints (quant_method "fp8") against HF on the dequantized model.

The reference is what the docs say it is: the model whose weights are q * scale, block by block
(DeepSeek's published weight_dequant rule, partial blocks cropped), run by HF transformers in
float32 on CPU. The quantized files are written by fixtures.make_fp8 with torch's own
float8_e4m3fn and float8_e8m0fnu conversions, in three scale encodings (bf16 as Qwen3-FP8, E8M0
exponents, float32 as DeepSeek-V3) and with block sizes that leave partial blocks. Tolerances are
test_parity's.
"""
import json
import os
import subprocess

import pytest

from conftest import require, run_cli
import fixtures
from test_parity import assert_dynamic_analyses_run, compare_resident_and_streamed

NAMES = list(fixtures.FP8)


@pytest.fixture(scope="module")
def fp8(tmp_path_factory):
    require("transformers")
    require("safetensors")
    root = tmp_path_factory.mktemp("fp8")
    built = {}

    def get(name):
        if name not in built:
            built[name] = fixtures.make_fp8(name, str(root / name))
        return built[name]

    return get


@pytest.mark.parametrize("name", NAMES)
def test_fp8_parity_cpu_float32(cli, fp8, tmp_path, name):
    ckpt, ref = fp8(name)
    info = json.loads(run_cli(cli, "info", ckpt, "--json").stdout)
    block = fixtures.FP8[name][2]
    assert info["quantization"]["method"] == "fp8"
    assert info["quantization"]["weight_block_size"] == block
    with open(os.path.join(ckpt, "config.json")) as f:
        assert "quantization_config" in json.load(f)
    from safetensors import safe_open
    with safe_open(os.path.join(ckpt, "model.safetensors"), "pt") as f:
        n_fp8 = sum(1 for k in f.keys() if k.endswith("_scale_inv"))
    assert info["quantization"]["quantized_tensors"] == n_fp8 > 0
    compare_resident_and_streamed(cli, ckpt, str(tmp_path / "s.h5"), ref)


def test_fp8_dynamic_analyses(cli, fp8, tmp_path):
    """The dynamic analyses run on an FP8 model (the static ones are checked against numpy on the
    dequantized weights in tests/analysis/test_analyses.py)."""
    ckpt, _ = fp8("qwen2_moe_fp8_f32_scales")
    assert_dynamic_analyses_run(cli, ckpt, str(tmp_path / "s.h5"))


def test_fp8_indexer_weights_in_float16(cli, fp8, tmp_path):
    """DeepSeek-V3.2's indexer in a float16 run: transformers keeps weights_proj in float32 there, so the
    FP8 file's head weights are dequantized into float32, not rounded to float16 (against HF in float16
    on the dequantized weights, test_parity's float16 tolerances)."""
    torch = require("torch")
    from test_parity import F16_TOL, trace_and_compare
    ckpt, _ = fp8("deepseek_v32_fp8_f32_scales")
    hf = fixtures.hf_from_pretrained(os.path.join(os.path.dirname(ckpt), "dequantized"), torch.float16)
    assert hf.model.layers[0].self_attn.indexer.weights_proj.weight.dtype == torch.float32
    trace_and_compare(cli, ckpt, str(tmp_path / "s.h5"), fixtures.reference(hf), "--dtype", "float16", **F16_TOL)


SCALE = "model.layers.0.self_attn.q_proj.weight_scale_inv"


def _bad_cases():
    torch = require("torch")
    return {
        "scale_missing": (None, lambda sd: sd.pop(SCALE), [SCALE, "missing scale tensor"]),
        "scale_wrong_grid": (None, lambda sd: sd.__setitem__(SCALE, sd[SCALE][:-1]),
                             [SCALE, "does not match", "weight_block_size"]),
        "block_size_disagrees": (lambda c: c["quantization_config"].__setitem__("weight_block_size", [64, 64]), None,
                                 ["_scale_inv", "does not match", "64 x 64"]),
        "scale_dtype": (None, lambda sd: sd.__setitem__(SCALE, sd[SCALE].to(torch.float16)),
                        [SCALE, "scale dtype F16"]),
        "unknown_method": (lambda c: c["quantization_config"].__setitem__("quant_method", "awq"), None,
                           ["config.json", "quant_method", "awq", "not supported"]),
        "fmt_e5m2": (lambda c: c["quantization_config"].__setitem__("fmt", "e5m2"), None,
                     ["config.json", "fmt", "e5m2"]),
        "no_quantization_config": (lambda c: c.pop("quantization_config"), None,
                                   ["q_proj.weight", "quant_method fp8"]),
        "block_size_shape": (lambda c: c["quantization_config"].__setitem__("weight_block_size", [128]), None,
                             ["config.json", "weight_block_size", "two block sizes"]),
        "fp8_norm": (None, lambda sd: sd.__setitem__("model.norm.weight", sd["model.norm.weight"].to(
            torch.float8_e4m3fn)), ["model.norm.weight", "F8_E4M3"]),
    }


@pytest.mark.parametrize("case", ["scale_missing", "scale_wrong_grid", "block_size_disagrees", "scale_dtype",
                                  "unknown_method", "fmt_e5m2", "no_quantization_config", "block_size_shape",
                                  "fp8_norm"])
def test_fp8_bad_input_is_named(cli, fp8, tmp_path, case):
    """Every command that opens the checkpoint stops with exit 1 and a message naming the file and
    the tensor or key; nothing is read as weights."""
    ckpt, _ = fp8("qwen2_moe_fp8_f32_scales")
    cfg_fn, sd_fn, words = _bad_cases()[case]
    d = fixtures.copy_checkpoint(ckpt, str(tmp_path / "bad"), cfg_fn, sd_fn)
    for args in (["info", d], ["trace", d, "--token-ids", "1,2,3", "--out", str(tmp_path / "s.h5")]):
        r = subprocess.run([cli, *args], capture_output=True, text=True, timeout=120)
        assert r.returncode == 1, (case, args[0], r.stdout, r.stderr)
        for w in words:
            assert w in r.stderr, (case, w, r.stderr)


def test_e8m0_nan_scale_is_warned(cli, fp8, tmp_path):
    """An E8M0 scale byte of 255 is NaN (OCP MX): the weight it scales dequantizes to NaN in that
    block, and the run warns naming the tensor instead of reading the NaN as data silently."""
    torch = require("torch")
    ckpt, _ = fp8("mixtral_fp8_e8m0_scales")
    name = "model.layers.0.self_attn.q_proj.weight"

    def poison(sd):
        assert sd[name + "_scale_inv"].dtype == torch.float8_e8m0fnu
        sd[name + "_scale_inv"].view(torch.uint8)[0, 0] = 255

    d = fixtures.copy_checkpoint(ckpt, str(tmp_path / "nan"), sd_fn=poison)
    out = str(tmp_path / "s.h5")
    r = run_cli(cli, "trace", d, "--out", out, "--token-ids", "1,2,3,4", "--run", "r")
    assert f"warning: tensor '{name}'" in r.stderr, r.stderr
    runs = json.loads(run_cli(cli, "session", out, "--json").stdout)["runs"]
    assert any(name in w for w in runs[0]["warnings"])

"""Mistral 4 beyond the parity table (test_parity.py runs its fixtures against HF): a config
without RoPE keys gets transformers' own default (YaRN x128 from 8192 positions, the query
temperature with beta 0.1), checked against HF's model built from the same keys; info shows the
temperature; the options transformers' class cannot run, and a damaged one, are named."""
import json

import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import compare, trace


def test_default_rope_is_transformers(cli, tmp_path):
    """No rope_parameters: transformers' Mistral4Config fills in YaRN and the temperature. Our
    info shows the factors HF's modules hold, and the trace matches HF's model of that config."""
    t = require("transformers")
    h5py = require("h5py")
    _, kw = fixtures.CONFIGS["mistral4_plain"]
    kw = {k: v for k, v in kw.items() if k != "rope_parameters"}
    cfg = dict(fixtures.BASE, **kw)
    model = fixtures.model_from_config(t.Mistral4Config(**cfg))
    assert model.config.rope_parameters["llama_4_scaling_beta"] == 0.1  # transformers' default
    d = str(tmp_path / "ckpt")
    model.save_pretrained(d)
    with open(f"{d}/config.json") as f:
        saved = json.load(f)
    saved.pop("rope_parameters")  # the keys as a config without them has them
    saved.pop("rope_scaling", None)
    with open(f"{d}/config.json", "w") as f:
        json.dump(saved, f)
    rope = json.loads(run_cli(cli, "info", d, "--json").stdout)["rope"]
    assert rope["type"] == "yarn" and rope["factor"] == 128.0 and rope["original_max_position_embeddings"] == 8192
    assert rope["attention_factor"] == pytest.approx(model.model.rotary_emb.attention_scaling, rel=1e-12)
    attn = model.model.layers[0].self_attn
    assert rope["softmax_scale_factor"] == pytest.approx(attn.scaling * attn.qk_head_dim ** 0.5, rel=1e-12)
    assert rope["llama_4_scaling_beta"] == 0.1 and rope["llama_4_scaling_positions"] == 8192
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], fixtures.reference(model))


def test_info_shows_query_temperature(cli, build_fixture):
    per, _, _ = build_fixture("mistral4_groups_temperature")
    text = run_cli(cli, "info", per).stdout
    assert "queries x (1 + 0.5 ln(1 + floor(position / 4)))" in text, text


def rope_edit(**changes):
    def fn(c):
        rp = c["rope_parameters"]
        for k, v in changes.items():
            if v is None:
                rp.pop(k, None)
            else:
                rp[k] = v
    return fn


BAD = [
    (rope_edit(rope_type="default", type=None, factor=None), ["rope_parameters.rope_type", "needs YaRN"]),
    (lambda c: c.update(rope_parameters={}), ["needs YaRN"]),  # an empty dict is not replaced by the default
    (rope_edit(llama_4_scaling_beta=None), ["rope_parameters.llama_4_scaling_beta", "missing"]),
    (rope_edit(llama_4_scaling_beta=-1.0), ["rope_parameters.llama_4_scaling_beta", "[0, 10]"]),
    (rope_edit(partial_rotary_factor=0.5), ["rope_parameters.partial_rotary_factor", "12 dims", "qk_rope_head_dim = 8"]),
    # 4.x's rope_scaling replaces the dict the class fills in: no default factor, tables of head_dim
    (lambda c: c.update(rope_scaling={k: v for k, v in c["rope_parameters"].items() if k != "partial_rotary_factor"}),
     ["partial_rotary_factor", "24 dims"]),
    (lambda c: c.update(num_key_value_heads=2), ["num_key_value_heads", "latent"]),
    (lambda c: c.update(n_group=3), ["n_group", "equal groups"]),
    (lambda c: c.update(num_experts_per_tok=9), ["num_experts_per_tok", "groups kept"]),
]


@pytest.mark.parametrize("i", range(len(BAD)))
def test_options_named(cli, build_fixture, tmp_path, i):
    edit, words = BAD[i]
    per, _, _ = build_fixture("mistral4_groups_temperature")
    assert_info_refuses(cli, fixtures.copy_checkpoint(per, str(tmp_path / "bad"), edit), words)


def test_top_level_keys_as_transformers_reads_them(cli, tmp_path):
    """A top-level original_max_position_embeddings (6) wins over the RoPE dict's (4) for YaRN and
    the query temperature alike, and a top-level partial_rotary_factor is ignored (the class fills
    in the dict's first): the trace matches transformers' model of that config."""
    t = require("transformers")
    h5py = require("h5py")
    _, kw = fixtures.CONFIGS["mistral4_groups_temperature"]
    cfg = dict(fixtures.BASE, **kw, original_max_position_embeddings=6, partial_rotary_factor=0.5)
    model = fixtures.model_from_config(t.Mistral4Config(**cfg))
    d = str(tmp_path / "ckpt")
    model.save_pretrained(d)
    with open(f"{d}/config.json") as f:
        saved = json.load(f)
    saved.update(original_max_position_embeddings=6, partial_rotary_factor=0.5)
    saved["rope_parameters"]["original_max_position_embeddings"] = 4
    with open(f"{d}/config.json", "w") as f:
        json.dump(saved, f)
    rope = json.loads(run_cli(cli, "info", d, "--json").stdout)["rope"]
    assert rope["original_max_position_embeddings"] == 6 and rope["llama_4_scaling_positions"] == 6
    out = str(tmp_path / "s.h5")
    trace(cli, d, out, "--all-experts", "--save-logits", "--run", "r")
    with h5py.File(out, "r") as f:
        compare(f["runs/r"], fixtures.reference(model))

"""PyTorch checkpoints (issue 23): pytorch_model.bin and its shards (pytorch_model.bin.index.json),
zip-format torch.save files, read by core/checkpoint/torch_bin.cpp without executing anything.

The fixtures are written by torch.save itself: a model's own state_dict() (a tied head sharing
the embeddings' storage, as torch.save keeps it), a safetensors checkpoint re-saved as shards with
a strided (transposed-view) tensor, the FP8 fixture (float8 tensors go through
torch._utils._rebuild_tensor_v3). transformers 5 no longer writes .bin files (save_pretrained has
no safe_serialization switch) but still loads them: the reference is transformers loading the
very .bin directory. Each .bin trace must also equal the safetensors trace of the same weights
bit for bit.

The malicious file is a state dict with one value whose __reduce__ calls os.system: the test
first shows the payload is live (plain pickle loading runs it), then that the CLI refuses the
file naming data.pkl and the global, and that the command never ran.
"""
import glob
import json
import os
import shutil
import subprocess
import sys
import zipfile

import numpy as np
import pytest

from conftest import assert_info_refuses, require, run_cli
import fixtures
from test_parity import trace, trace_and_compare

torch = require("torch")


def copy_side_files(src, dst):
    """config.json, tokenizer files: everything of src but its weights."""
    os.makedirs(dst, exist_ok=True)
    for f in os.listdir(src):
        if not f.startswith("model") or not f.endswith((".safetensors", ".json")) or f == "config.json":
            if os.path.isfile(os.path.join(src, f)):
                shutil.copy(os.path.join(src, f), dst)
    return dst


def save_shards(sd, dst, shards):
    """sd as pytorch_model.bin (shards == 1) or as `shards` files listed in pytorch_model.bin.index.json."""
    if shards == 1:
        torch.save(sd, os.path.join(dst, "pytorch_model.bin"))
        return
    names, weight_map = list(sd), {}
    for i in range(shards):
        fn = f"pytorch_model-{i + 1:05d}-of-{shards:05d}.bin"
        part = {k: sd[k] for k in names[i::shards]}
        torch.save(part, os.path.join(dst, fn))
        weight_map.update({k: fn for k in part})
    with open(os.path.join(dst, "pytorch_model.bin.index.json"), "w") as f:
        json.dump({"metadata": {"total_size": 0}, "weight_map": weight_map}, f)


def bin_copy(src, dst, shards=1, strided=()):
    """The safetensors checkpoint directory src re-saved by torch.save; `strided`: tensors saved
    as transposed views of a transposed copy (the same values, strides (1, rows))."""
    from safetensors.torch import load_file
    copy_side_files(src, dst)
    sd = {}
    for f in sorted(glob.glob(os.path.join(src, "model*.safetensors"))):
        sd.update(load_file(f))
    for k in strided:
        sd[k] = sd[k].t().contiguous().t()
        assert not sd[k].is_contiguous()
    save_shards(sd, dst, shards)
    return dst


def hf_reference(d):
    """transformers' own trace of the checkpoint directory d (its loader reads the .bin)."""
    model, info = fixtures.transformers.AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32,
                                                                             output_loading_info=True)
    assert not info["missing_keys"] and not info["unexpected_keys"], info
    model.config._attn_implementation = "sdpa"
    model.eval()
    return fixtures.reference(model)


def assert_runs_identical(a, b, run="r"):
    """Every dataset of run `run` in sessions a and b bit for bit the same."""
    h5py = require("h5py")
    with h5py.File(a, "r") as fa, h5py.File(b, "r") as fb:
        names = []
        fa[f"runs/{run}"].visit(lambda n: names.append(n) if isinstance(fa[f"runs/{run}/{n}"], h5py.Dataset) else None)
        assert any(n.endswith("logits") for n in names)
        for n in names:
            np.testing.assert_array_equal(fa[f"runs/{run}/{n}"][()], fb[f"runs/{run}/{n}"][()], err_msg=n)


def trace_both(cli, st_dir, bin_dir, tmp_path, ref):
    """bin_dir against transformers' reference and bit for bit against st_dir's trace."""
    trace_and_compare(cli, bin_dir, str(tmp_path / "bin.h5"), ref)
    trace(cli, st_dir, str(tmp_path / "st.h5"), "--all-experts", "--save-logits", "--run", "r")
    assert_runs_identical(str(tmp_path / "bin.h5"), str(tmp_path / "st.h5"))


def test_state_dict_of_a_tied_model(cli, build_fixture, tmp_path):
    """torch.save(model.state_dict()): the packed experts of transformers 5's in-memory layout,
    and the tied head stored once, its storage shared with the embeddings."""
    per, packed, ref = build_fixture("mixtral_sliding_tied")
    model = fixtures.build_model("mixtral_sliding_tied")
    d = copy_side_files(packed, str(tmp_path / "bin"))
    sd = model.state_dict()
    assert sd["lm_head.weight"].untyped_storage().data_ptr() == sd["model.embed_tokens.weight"].untyped_storage().data_ptr()
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    with zipfile.ZipFile(os.path.join(d, "pytorch_model.bin")) as z:  # one storage for both
        assert len([n for n in z.namelist() if "/data/" in n]) == len(sd) - 1
    trace_both(cli, packed, d, tmp_path, hf_reference(d))


def test_shards_with_a_strided_tensor(cli, build_fixture, tmp_path):
    """Three shards with an index; one expert matrix and an attention projection saved as
    transposed views, gathered by the reader into row-major order."""
    per, packed, ref = build_fixture("qwen2_moe_shared")
    strided = ["model.layers.0.self_attn.q_proj.weight", "model.layers.1.mlp.experts.2.down_proj.weight"]
    d = bin_copy(per, str(tmp_path / "bin"), shards=3, strided=strided)
    assert os.path.exists(os.path.join(d, "pytorch_model.bin.index.json"))
    trace_both(cli, per, d, tmp_path, hf_reference(d))
    # streamed layer by layer (pages of every tensor released after its layer, the gathered
    # copies included) the same run again
    trace(cli, d, str(tmp_path / "streamed.h5"), "--all-experts", "--save-logits", "--run", "r",
          "--layer-streaming", "on")
    assert_runs_identical(str(tmp_path / "streamed.h5"), str(tmp_path / "bin.h5"))


def test_float8_tensors(cli, tmp_path):
    """The FP8 fixture (F8_E4M3 weights, F8_E8M0 scales) re-saved by torch.save, which writes
    float8 tensors through _rebuild_tensor_v3 on untyped storages; bf16 storage beside them."""
    fp8_dir, ref = fixtures.make_fp8("mixtral_fp8_e8m0_scales", str(tmp_path / "fx"))
    d = bin_copy(fp8_dir, str(tmp_path / "bin"))
    with zipfile.ZipFile(os.path.join(d, "pytorch_model.bin")) as z:
        pkl = z.read([n for n in z.namelist() if n.endswith("/data.pkl")][0])
    assert b"_rebuild_tensor_v3" in pkl and b"float8_e8m0fnu" in pkl
    trace(cli, fp8_dir, str(tmp_path / "st.h5"), "--all-experts", "--save-logits", "--run", "r")
    trace(cli, d, str(tmp_path / "bin.h5"), "--all-experts", "--save-logits", "--run", "r")
    assert_runs_identical(str(tmp_path / "bin.h5"), str(tmp_path / "st.h5"))


def test_static_analyses_identical(cli, build_fixture, tmp_path):
    """The static pass (weight similarity, which reads the mapped tensors directly) on the .bin
    the same as on the safetensors checkpoint."""
    h5py = require("h5py")
    per, packed, ref = build_fixture("mixtral_gqa")
    d = bin_copy(per, str(tmp_path / "bin"), strided=["model.layers.0.block_sparse_moe.experts.1.w1.weight"])
    for name, ck in (("st", per), ("bin", d)):
        run_cli(cli, "analyze", ck, "--out", str(tmp_path / f"{name}.h5"), "--static", "S1")
    with h5py.File(tmp_path / "st.h5", "r") as a, h5py.File(tmp_path / "bin.h5", "r") as b:
        names = []
        a["analyses"].visit(lambda n: names.append(n) if isinstance(a[f"analyses/{n}"], h5py.Dataset) else None)
        assert names
        for n in names:
            np.testing.assert_array_equal(a[f"analyses/{n}"][()], b[f"analyses/{n}"][()], err_msg=n)


class Payload:
    """Pickles as a call of os.system (GLOBAL posix system, REDUCE): what a malicious .bin holds."""

    def __init__(self, cmd):
        self.cmd = cmd

    def __reduce__(self):
        return (os.system, (self.cmd,))


def test_malicious_pickle_refused_and_never_run(cli, build_fixture, tmp_path):
    per, packed, ref = build_fixture("mixtral_gqa")
    d = copy_side_files(per, str(tmp_path / "evil"))
    marker = tmp_path / "pwned"
    sd = {"model.embed_tokens.weight": torch.zeros(2, 2), "model.norm.weight": Payload(f"touch {marker}")}
    torch.save(sd, os.path.join(d, "pytorch_model.bin"))
    # the payload is live: loading the file the old way (weights_only=False) runs it
    live = tmp_path / "live"
    torch.save({"x": Payload(f"touch {live}")}, str(tmp_path / "live.bin"))
    subprocess.run([sys.executable, "-c", f"import torch; torch.load({str(tmp_path / 'live.bin')!r}, weights_only=False)"],
                   check=True, capture_output=True)
    assert live.exists()
    for cmd in (["info", d], ["trace", d, "--out", str(tmp_path / "s.h5"), "--token-ids", "1,2"]):
        r = subprocess.run([cli, *cmd], capture_output=True, text=True, timeout=600)
        assert r.returncode == 1, r.stderr
        for w in ("pytorch_model.bin", "data.pkl", "global 'posix.system' is not allowed"):
            assert w in r.stderr, (w, r.stderr)
    assert not marker.exists()
    assert not (tmp_path / "s.h5").exists()


DEMO_CONFIG = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                           "resources", "demo", "moe", "config.json")


def small_bin(tmp_path):
    """A checkpoint directory: the demo's config.json and a tiny pytorch_model.bin."""
    d = tmp_path / "ck"
    d.mkdir()
    shutil.copy(DEMO_CONFIG, d / "config.json")
    torch.save({"a": torch.ones(3, 4)}, str(d / "pytorch_model.bin"))
    return d


def rezip(f, tmp_path, compression=None, keep=lambda name: True):
    """Rewrites the zip f entry by entry: each kept entry deflated (compression given: its name
    alone) or copied with its stored record."""
    src = str(tmp_path / "src.bin")
    shutil.move(f, src)
    with zipfile.ZipFile(src) as zi, zipfile.ZipFile(f, "w", compression or zipfile.ZIP_STORED) as zo:
        for info in zi.infolist():
            if keep(info.filename):
                zo.writestr(info.filename if compression else info, zi.read(info))


@pytest.mark.parametrize("case", ["legacy", "compressed", "training", "float64", "opcode", "broadcast",
                                  "overlapping_views", "missing_storage", "truncated"])
def test_bad_bin_is_named(cli, tmp_path, case):
    d = small_bin(tmp_path)
    f = str(d / "pytorch_model.bin")
    if case == "legacy":
        torch.save({"a": torch.ones(2)}, f, _use_new_zipfile_serialization=False)
        words = ["legacy torch.save file"]
    elif case == "compressed":
        rezip(f, tmp_path, compression=zipfile.ZIP_DEFLATED)
        words = ["compressed (method 8)"]
    elif case == "training":
        torch.save({"model": {"a": torch.ones(2)}, "step": 3}, f)
        words = ["'model' holds a dict", "training checkpoint"]
    elif case == "float64":
        torch.save({"model.extra_buffer": torch.ones(2, dtype=torch.float64)}, f)
        words = ["dtype torch.float64 is not supported", "model.extra_buffer"]
    elif case == "opcode":  # a set (EMPTY_SET, protocol 4) inside the state dict
        torch.save({"a": torch.ones(2), "s": {1, 2}}, f, pickle_protocol=4)
        words = ["opcode EMPTY_SET (0x8f) is not allowed", "data.pkl"]
    elif case == "broadcast":
        torch.save({"a": torch.ones(1).expand(1000)}, f)
        words = ["more elements than its storage", "broadcast"]
    elif case == "overlapping_views":  # 60 transposed views of one storage: copies 60x its size
        base = torch.ones(40, 25)
        torch.save({f"v{i}": base.t() for i in range(60)}, f)
        words = ["row-major copies would exceed the file's size"]
    elif case == "missing_storage":
        rezip(f, tmp_path, keep=lambda name: "/data/" not in name)
        words = ["storage '0' has no entry"]
    else:  # truncated: the zip directory cut off
        data = open(f, "rb").read()
        open(f, "wb").write(data[: len(data) // 2])
        words = ["zip end-of-central-directory"]
    assert_info_refuses(cli, d, words, file="pytorch_model.bin")

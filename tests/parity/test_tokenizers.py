"""Our tokenizer against HF tokenizers' Tokenizer.from_file on >= 2000 strings per tokenizer,
with and without special tokens; decode(encode(s)) against HF's decode. All strings of one
tokenizer go through one expertscope-cli process (--jsonl)."""
import json
import subprocess

import pytest

from conftest import missing, require, run_cli
import tok_corpus
import tok_fixtures

_built = {}


@pytest.fixture(scope="module")
def corpus_file(tmp_path_factory):
    d = tmp_path_factory.mktemp("tokcorpus")
    texts = tok_corpus.corpus()
    assert len(texts) >= 2000
    p = d / "corpus.jsonl"
    with open(p, "w", encoding="utf-8") as f:
        for t in texts:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    return str(p), texts


@pytest.fixture(scope="module")
def tokenizer_path(tmp_path_factory):
    require("tokenizers")
    require("transformers")

    def get(name):
        if name not in _built:
            try:
                _built[name] = tok_fixtures.build(name, str(tmp_path_factory.mktemp(name)))
            except ImportError as e:
                missing(str(e))
        return _built[name]

    return get


def ours(cli, path, corpus, special):
    args = ["tokenize", "--tokenizer", path, "--jsonl", corpus] + ([] if special else ["--no-special"])
    r = run_cli(cli, *args)
    return [json.loads(line) for line in r.stdout.splitlines()]


@pytest.mark.parametrize("name", tok_fixtures.NAMES)
def test_ids_and_decode_match_hf(cli, tokenizer_path, corpus_file, name):
    from tokenizers import Tokenizer
    path = tokenizer_path(name)
    corpus, texts = corpus_file
    hf = Tokenizer.from_file(path)
    for special in (True, False):
        got = ours(cli, path, corpus, special)
        assert len(got) == len(texts)
        bad = []
        for t, g in zip(texts, got):
            ref = hf.encode(t, add_special_tokens=special).ids
            if g["ids"] != ref:
                bad.append((t, ref, g["ids"]))
            elif g["decoded"] != hf.decode(ref):
                bad.append((t, "decode", hf.decode(ref), g["decoded"]))
        assert not bad, f"{len(bad)} of {len(texts)} differ (special={special}); first: {bad[:3]}"


def unescape(piece):
    r"""Inverse of our display escapes (\xNN, \n, \t, \r, \\, \uXXXX, \UXXXXXXXX) -> bytes."""
    out, i = bytearray(), 0
    while i < len(piece):
        c = piece[i]
        if c == "\\" and i + 1 < len(piece):
            n = piece[i + 1]
            if n == "x":
                out.append(int(piece[i + 2:i + 4], 16))
                i += 4
                continue
            if n in "uU":
                w = 4 if n == "u" else 8
                out += chr(int(piece[i + 2:i + 2 + w], 16)).encode()
                i += 2 + w
                continue
            out += {"n": b"\n", "t": b"\t", "r": b"\r", "\\": b"\\"}[n]
            i += 2
            continue
        out += c.encode()
        i += 1
    return bytes(out)


@pytest.mark.parametrize("name", ["bytelevel_gpt2", "llama3_style", "deepseek_real"])
def test_display_pieces_round_trip_to_the_text(cli, tokenizer_path, name):
    r"""Byte-level pieces may be half a character: shown with \xNN escapes, and together they
    are exactly the text's bytes."""
    path = tokenizer_path(name)
    from tokenizers import Tokenizer
    hf = Tokenizer.from_file(path)
    for text in ["Größe 日本 😀 tab\there\n", "👩‍💻 \x07bell \\ back", "ä" * 7 + "中文"]:
        j = json.loads(run_cli(cli, "tokenize", "--tokenizer", path, "--text", text, "--no-special", "--json").stdout)
        assert j["ids"] == hf.encode(text, add_special_tokens=False).ids
        assert b"".join(unescape(p) for p in j["pieces"]) == text.encode()
        assert all("\n" not in p and "\x07" not in p for p in j["pieces"])


def test_tokenizer_config_bos_eos(cli, tokenizer_path, tmp_path):
    """add_bos_token / add_eos_token in tokenizer_config.json rebuild the template (as
    transformers 4.x Llama fast tokenizers did). transformers 5.23's AutoTokenizer ignores them
    when tokenizer.json exists, and from_file never reads them: both are asserted here, so a
    change upstream shows."""
    import shutil
    from tokenizers import Tokenizer
    transformers = require("transformers")
    src = tokenizer_path("sentencepiece_llama_legacy")
    d = tmp_path / "tok"
    d.mkdir()
    shutil.copy(src, d / "tokenizer.json")
    hf = Tokenizer.from_file(str(d / "tokenizer.json"))
    text = "Routers choose experts."
    body = hf.encode(text, add_special_tokens=False).ids
    bos, eos = hf.token_to_id("<s>"), hf.token_to_id("</s>")
    for add_bos, add_eos in ((False, True), (True, True), (False, False)):
        json.dump({"add_bos_token": add_bos, "add_eos_token": add_eos, "bos_token": "<s>", "eos_token": "</s>",
                   "tokenizer_class": "LlamaTokenizer"}, open(d / "tokenizer_config.json", "w"))
        j = json.loads(run_cli(cli, "tokenize", "--tokenizer", d / "tokenizer.json", "--text", text, "--json").stdout)
        assert j["ids"] == ([bos] if add_bos else []) + body + ([eos] if add_eos else [])
        at = transformers.AutoTokenizer.from_pretrained(str(d))
        assert at(text).input_ids == hf.encode(text).ids  # v5 keeps the tokenizer.json template


def test_invalid_utf8_names_byte_offset(cli, tokenizer_path, tmp_path):
    path = tokenizer_path("bytelevel_gpt2")
    r = subprocess.run([cli, "tokenize", "--tokenizer", path, "--text", b"ab\xffcd"], capture_output=True)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "invalid UTF-8" in err and "at byte 2" in err and "'text'" in err
    bad = tmp_path / "bad.jsonl"
    bad.write_bytes(b'{"text": "ok"}\n{"text": "caf\xc3"}\n')
    r = subprocess.run([cli, "tokenize", "--tokenizer", path, "--jsonl", str(bad)], capture_output=True)
    assert r.returncode == 1
    err = r.stderr.decode()
    assert "line 2" in err and "invalid UTF-8" in err and str(bad) in err


def test_bad_tokenizer_files(cli, tmp_path):
    t = tmp_path / "tokenizer.json"
    t.write_text('{"model": {"type": "Unigram", "vocab": []}}')
    r = run_cli(cli, "tokenize", "--tokenizer", t, "--text", "x", check=False)
    assert r.returncode == 1 and "model.type" in r.stderr and "Unigram" in r.stderr and str(t) in r.stderr
    t.write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": []}, "normalizer": {"type": "Precompiled"}}')
    r = run_cli(cli, "tokenize", "--tokenizer", t, "--text", "x", check=False)
    assert r.returncode == 1 and "normalizer.type" in r.stderr and "Precompiled" in r.stderr
    t.write_text('{"model": {"type": "BPE", "vocab": {"a": 0}, "merges": ["a b"]}}')
    r = run_cli(cli, "tokenize", "--tokenizer", t, "--text", "x", check=False)
    assert r.returncode == 1 and "model.merges[0]" in r.stderr
    t.write_text('{"model": ')
    r = run_cli(cli, "tokenize", "--tokenizer", t, "--text", "x", check=False)
    assert r.returncode == 1 and "JSON" in r.stderr
    r = run_cli(cli, "tokenize", "--tokenizer", tmp_path / "none.json", "--text", "x", check=False)
    assert r.returncode == 1 and "none.json" in r.stderr


@pytest.mark.parametrize("tok_name", ["bytelevel_gpt2", "sentencepiece_llama_legacy"])
def test_trace_text_prompts(cli, tokenizer_path, tmp_path, tok_name):
    """--prompt and --prompts encode with the checkpoint's tokenizer (special tokens included),
    store every token's bytes and display piece, and route exactly as HF on those ids."""
    import shutil
    import numpy as np
    h5py = require("h5py")
    import fixtures
    from tokenizers import Tokenizer
    tpath = tokenizer_path(tok_name)
    hf_tok = Tokenizer.from_file(tpath)
    V = hf_tok.get_vocab_size(with_added_tokens=True)
    model = fixtures.build_model("mixtral_gqa", vocab_size=V)
    ck = tmp_path / "ckpt"
    model.save_pretrained(ck)
    shutil.copy(tpath, ck / "tokenizer.json")
    texts = ["The router picks experts.", "Größe und 日本語 😀", "x"]
    (tmp_path / "p.jsonl").write_text("\n".join(json.dumps({"text": t}, ensure_ascii=False) for t in texts[1:]) + "\n",
                                      encoding="utf-8")
    (tmp_path / "p.txt").write_text("\n".join(texts[1:]) + "\n\n", encoding="utf-8")
    out = tmp_path / "s.h5"
    run_cli(cli, "trace", ck, "--prompt", texts[0], "--prompts", tmp_path / "p.jsonl", "--save-logits", "--run", "a",
            "--out", out)
    run_cli(cli, "trace", ck, "--prompts", tmp_path / "p.txt", "--run", "b", "--out", out)
    ids = [hf_tok.encode(t).ids for t in texts]
    ref = fixtures.reference(model, prompts=ids)
    with h5py.File(out, "r") as f:
        r = f["runs/a"]
        assert list(r["tokens"][:]) == [i for p in ids for i in p]
        assert list(r["prompt_offsets"][:]) == list(np.cumsum([0] + [len(p) for p in ids]))
        tb = [bytes(x) for x in r["token_bytes"][:]]
        pieces = [p.decode() if isinstance(p, bytes) else p for p in r["token_pieces"][:]]
        assert len(tb) == len(pieces) == len(r["tokens"])
        for k, t in enumerate(texts):
            a, b = r["prompt_offsets"][k], r["prompt_offsets"][k + 1]
            special = set(hf_tok.encode(t).ids) - set(hf_tok.encode(t, add_special_tokens=False).ids)
            body = b"".join(tb[i] for i in range(a, b) if r["tokens"][i] not in special)
            if tok_name == "bytelevel_gpt2":
                assert body == t.encode()
            else:  # SentencePiece: the prefix space the normalizer adds shows as a leading space
                assert body == (" " + t).encode()
        np.testing.assert_array_equal(r["layers/1/topk_experts"][:], ref["L1_topk_experts"])
        np.testing.assert_allclose(r["layers/1/router_logits"][:], ref["L1_router_logits"], atol=1e-5, rtol=0)
        assert np.abs(r["logits"][:] - ref["logits"]).max() <= 1e-4 * np.abs(ref["logits"]).max()
        assert list(f["runs/b/tokens"][:]) == [i for p in ids[1:] for i in p]
        assert [t.decode() for t in r["prompt_texts"][:]] == texts


def test_trace_text_prompt_errors(cli, build_fixture, tmp_path):
    per = build_fixture("mixtral_gqa")[0]  # a checkpoint without tokenizer.json
    r = run_cli(cli, "trace", per, "--prompt", "hello", "--out", tmp_path / "s.h5", check=False)
    assert r.returncode == 1 and "tokenizer.json" in r.stderr
    bad = tmp_path / "p.jsonl"
    bad.write_text('{"text": "ok"}\n{"txt": "no"}\n')
    r = run_cli(cli, "trace", per, "--prompts", bad, "--out", tmp_path / "s.h5", check=False)
    assert r.returncode == 1 and str(bad) in r.stderr and "line 2" in r.stderr
    assert not (tmp_path / "s.h5").exists()


def test_analyze_presets_and_paragraphs(cli, tokenizer_path, tmp_path):
    """analyze --preset and --paragraphs make a run from the paper's inputs (verbatim, BOS
    included through the checkpoint's tokenizer; one forward per paragraph) in the same save as
    the analyses, and route it exactly as HF does."""
    import shutil
    import numpy as np
    h5py = require("h5py")
    import fixtures
    from tokenizers import Tokenizer
    tpath = tokenizer_path("sentencepiece_llama_legacy")
    hf_tok = Tokenizer.from_file(tpath)
    model = fixtures.build_model("mixtral_gqa", vocab_size=hf_tok.get_vocab_size(with_added_tokens=True))
    ck = tmp_path / "ckpt"
    model.save_pretrained(ck)
    shutil.copy(tpath, ck / "tokenizer.json")
    out = tmp_path / "s.h5"
    short = "As an open source alternative to"
    routing = ("As an open source alternative to Chat GPT, I do not have personal opinions. However, I can provide "
               "objective information about Chat GPT's capabilities and limitations based on its architecture and "
               "training data. Chat GPT is a powerful language model based on the GPT (Generative Pre-trained "
               "Transformer")
    paragraphs = ["First paragraph, with words.", "Zweiter Absatz: Größe.", "third"]
    (tmp_path / "p.txt").write_text(" = Title = \n\n  " + paragraphs[0] + "  \n = = Section = = \n" + paragraphs[1] +
                                    "\n\n\n" + paragraphs[2] + "\n", encoding="utf-8")
    run_cli(cli, "analyze", ck, "--out", out, "--dynamic", "D4,load", "--preset", "short")
    run_cli(cli, "analyze", ck, "--out", out, "--dynamic", "D4", "--preset", "routing-map")
    run_cli(cli, "analyze", ck, "--out", out, "--dynamic", "D4", "--paragraphs", tmp_path / "p.txt", "--run", "wiki")
    r = run_cli(cli, "analyze", ck, "--out", out, "--dynamic", "D4", "--preset", "short", check=False)
    assert r.returncode == 1 and "short" in r.stderr  # the run exists already
    with h5py.File(out, "r") as f:
        for run, texts in (("short", [short]), ("routing-map", [routing]), ("wiki", paragraphs)):
            ids = [hf_tok.encode(t).ids for t in texts]
            assert all(p[0] == hf_tok.token_to_id("<s>") for p in ids)  # BOS-prefixed
            g = f[f"runs/{run}"]
            assert [t.decode() for t in g["prompt_texts"][:]] == texts
            assert list(g["tokens"][:]) == [i for p in ids for i in p]
            assert list(g["prompt_offsets"][:]) == list(np.cumsum([0] + [len(p) for p in ids]))
            ref = fixtures.reference(model, prompts=ids)
            for l in ref["moe_layers"]:
                w = f[f"analyses/routing_map/{run}/layers/{l}/weights"][:]
                T = len(g["tokens"])
                expect = np.zeros((w.shape[0], T), dtype=np.float64)
                for t in range(T):
                    expect[ref[f"L{l}_topk_experts"][t], t] = ref[f"L{l}_topk_weights"][t]
                np.testing.assert_allclose(w, expect, atol=1e-5, rtol=0)
            assert f[f"analyses/routing_check/{run}/mismatches"].shape == (0, 2)
        assert "analyses/expert_load/short/counts" in f


# One long word: the BPE merge loop is a heap over a linked list (O(n log n)); the old rescan per
# merge was quadratic (100,000 spaces took 21 s). Same ids as HF on words of tens of thousands of
# symbols, where merges of equal rank overlap and chain.
LONG_WORDS = [" " * 100000, "\u00e9" * 50000, "ab" * 30000, "a" * 40001, "1234567890" * 5000,
              "\u4e2d\u6587" * 20000, "\U0001F600" * 20000, "the" * 20000 + " tail"]


@pytest.mark.parametrize("name", tok_fixtures.NAMES)
def test_long_words_match_hf(cli, tokenizer_path, tmp_path, name):
    from tokenizers import Tokenizer
    path = tokenizer_path(name)
    hf = Tokenizer.from_file(path)  # with the file's truncation and padding, as the CLI applies them
    p = tmp_path / "long.jsonl"
    with open(p, "w", encoding="utf-8") as f:
        for t in LONG_WORDS:
            f.write(json.dumps({"text": t}, ensure_ascii=False) + "\n")
    got = ours(cli, path, str(p), False)
    for t, g in zip(LONG_WORDS, got):
        assert g["ids"] == hf.encode(t, add_special_tokens=False).ids, (name, t[:20], len(t))

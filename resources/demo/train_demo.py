#!/usr/bin/env python3
"""Builds ExpertScope's demo models, from Debian packages to two HF checkpoints, in one command:

    .venv/bin/python resources/demo/train_demo.py

1. corpus: Debian Reference 2.100 in English, German, French and Spanish (GPL-2+) and the Python
   sources of Pygments 2.14 (BSD-2-Clause), fetched with `apt-get download` (no root needed);
   one document per level-2 section / per source file, split train / held-out by document (a
   section is held out in every language at once, so no translation of a held-out text is trained on);
2. a byte-level BPE tokenizer.json (HF tokenizers) trained on the training documents;
3. a dense Llama model trained from scratch;
4. its sparse upcycling into Mixtral: every expert a copy of the dense FFN plus small noise, a new
   router, training continued on the same data with the same tokenizer;
5. held-out evaluation: perplexity against the unigram perplexity of the same tokens, and per layer
   the Jensen-Shannon divergence among the domains' expert-usage distributions against a
   permutation of the domain labels among documents, for the trained MoE and right after upcycling.

Writes resources/demo/{dense,moe}/ (bf16 safetensors, config.json, tokenizer.json),
resources/demo/prompts.jsonl (sample prompts from held-out documents) and
resources/demo/metrics.json. Intermediate files go to --work (default build/demo-work).

    .venv/bin/python resources/demo/train_demo.py --model jetmoe

trains the JetMoE demo instead (mixture of attention heads and MoE FFN in every layer; HF's
JetMoeForCausalLM from scratch, at most 5 MB) on the same corpus with the demo pair's tokenizer,
and writes resources/demo/jetmoe/ and resources/demo/metrics-jetmoe.json.
"""
import argparse
import glob
import gzip
import hashlib
import json
import math
import os
import re
import shutil
import subprocess
import sys
import time

import numpy as np
import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

# Debian 12 (bookworm) packages and the versions the shipped models were trained on.
PACKAGES = {
    "debian-reference-common": "2.100",
    "debian-reference-en": "2.100",
    "debian-reference-de": "2.100",
    "debian-reference-fr": "2.100",
    "debian-reference-es": "2.100",
    "python3-pygments": "2.14.0+dfsg-1",
}
LANGUAGES = ["en", "de", "fr", "es"]
DOMAINS = LANGUAGES + ["code"]
HELD_OUT_MOD = 10  # a document is held out when its key hashes to 0 modulo this

SEQ = 256
TOKENIZER_VOCAB = 4096
DENSE = dict(vocab_size=TOKENIZER_VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=6,
             num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=SEQ * 2, rms_norm_eps=1e-5,
             rope_theta=10000.0, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=None)
EXPERTS, TOP_K = 8, 2
SHIPPED = ["dense", "moe", "jetmoe", "prompts.jsonl"]  # what resources/CMakeLists.txt installs
PAIR = ["dense", "moe", "prompts.jsonl"]  # the demo pair and its prompts: at most 16 MB (JetMoE: 5 MB on its own)
# The JetMoE demo: 4 layers, each with 8 attention experts (2 query heads of 32 each, sharing 2 K/V
# heads) and 8 FFN experts of 96, top-2 for both, the dense demo's width and vocabulary.
JETMOE = dict(vocab_size=TOKENIZER_VOCAB, hidden_size=128, num_hidden_layers=4, num_key_value_heads=2, kv_channels=32,
              intermediate_size=96, num_local_experts=8, num_experts_per_tok=2, max_position_embeddings=SEQ * 2,
              rms_norm_eps=1e-5, tie_word_embeddings=True, bos_token_id=0, eos_token_id=1, pad_token_id=None)


def tree_bytes(path):
    """Bytes of a file, or of every file under a directory."""
    if os.path.isfile(path):
        return os.path.getsize(path)
    return sum(os.path.getsize(os.path.join(r, n)) for r, _, names in os.walk(path) for n in names)


def log(*a):
    print(f"[{time.strftime('%H:%M:%S')}]", *a, flush=True)


def key_hash(key):
    return int(hashlib.sha256(key.encode()).hexdigest()[:8], 16)


# ---------------------------------------------------------------------------------------------
# corpus

def fetch_packages(work):
    """Downloads and unpacks the pinned packages; a version no longer on the mirror falls back to
    the current one, with a warning, and the versions used are recorded in metrics.json."""
    debs = os.path.join(work, "debs")
    root = os.path.join(work, "root")
    os.makedirs(debs, exist_ok=True)
    used = {}
    for pkg, ver in PACKAGES.items():
        have = glob.glob(os.path.join(debs, f"{pkg}_*.deb"))
        if not have:
            r = subprocess.run(["apt-get", "download", f"{pkg}={ver}"], cwd=debs, capture_output=True, text=True)
            if r.returncode != 0:
                log(f"warning: {pkg}={ver} is not available ({r.stderr.strip()}); taking the current version")
                subprocess.run(["apt-get", "download", pkg], cwd=debs, check=True)
            have = glob.glob(os.path.join(debs, f"{pkg}_*.deb"))
        deb = sorted(have)[-1]
        used[pkg] = os.path.basename(deb).split("_")[1].replace("%2b", "+")
        subprocess.run(["dpkg-deb", "-x", deb, root], check=True)
    return root, used


def reference_sections(text):
    """Level-2 sections of a Debian Reference plain-text rendering: {"2.3": text}. The body starts at
    the first chapter heading ("Chapter 1. ...", "Kapitel 1. ...", ...); the tables of contents
    before it are skipped. A chapter's introduction is section "N.0"."""
    lines = text.split("\n")
    start = next(i for i, l in enumerate(lines) if re.match(r"^[^\d\s]\S*\s1\.\s\S", l) and i > 100)
    sections, key, buf = {}, None, []

    def flush():
        if key is not None and buf:
            body = "\n".join(l[4:] if l.startswith("    ") else l for l in buf).strip()
            body = re.sub(r"\n{3,}", "\n\n", body)
            if len(body) > 200:
                sections[key] = sections.get(key, "") + body
    for line in lines[start:]:
        m = re.match(r"^(\d+)\.(\d+)\.\s\S", line)
        c = re.match(r"^[^\d\s]\S*\s(\d+)\.\s\S", line)
        if m:
            flush()
            key, buf = f"{m.group(1)}.{m.group(2)}", [line]
        elif c:
            flush()
            key, buf = f"{c.group(1)}.0", [line]
        else:
            buf.append(line)
    flush()
    return sections


def build_corpus(root):
    """[(domain, key, text, held_out)]. Code gets about as many training characters as a language."""
    docs = []
    for lang in LANGUAGES:
        path = os.path.join(root, f"usr/share/debian-reference/debian-reference.{lang}.txt.gz")
        with gzip.open(path, "rt", encoding="utf-8") as f:
            for key, text in reference_sections(f.read()).items():
                docs.append((lang, key, text, key_hash(key) % HELD_OUT_MOD == 0))
    lang_chars = np.mean([sum(len(t) for d, _, t, h in docs if d == l and not h) for l in LANGUAGES])
    base = os.path.join(root, "usr/lib/python3/dist-packages")
    files = []
    for path in glob.glob(os.path.join(base, "pygments", "**", "*.py"), recursive=True):
        rel = os.path.relpath(path, base)
        name = os.path.basename(path)
        if name.endswith("builtins.py") or name == "_mapping.py" or os.path.getsize(path) > 60000:
            continue  # generated keyword tables, not code anyone writes
        with open(path, encoding="utf-8") as f:
            text = f.read().strip()
        if len(text) > 200:
            files.append((key_hash(rel), rel, text))
    train_chars = 0
    for h, rel, text in sorted(files):
        held = h % HELD_OUT_MOD == 0
        if not held:
            if train_chars >= lang_chars:
                continue
            train_chars += len(text)
        docs.append(("code", rel, text, held))
    return docs


def train_tokenizer(docs):
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=TOKENIZER_VOCAB, min_frequency=2, special_tokens=["<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tok.train_from_iterator((t for d, k, t, h in docs if not h), trainer=trainer)
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", pair="<s> $A <s> $B",
                                                       special_tokens=[("<s>", 0)])
    assert tok.token_to_id("<s>") == 0 and tok.token_to_id("</s>") == 1
    return tok


# ---------------------------------------------------------------------------------------------
# training

def make_blocks(token_docs, seed):
    """Training documents' tokens concatenated and cut into SEQ-token blocks, in a seeded order."""
    stream = np.concatenate([np.asarray(t, dtype=np.int64) for t in token_docs])
    n = len(stream) // SEQ
    blocks = torch.from_numpy(stream[: n * SEQ].reshape(n, SEQ))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return blocks[order]


def train(model, blocks, start, steps, batch, lr, warmup, label, router_logits=False, every=0, probe=None):
    """AdamW with linear warmup and cosine decay to lr/10; reads blocks from `start` on, wrapping.
    probe(step) is called before the first step and every `every` steps (model in eval mode)."""
    decay = [p for n, p in model.named_parameters() if p.dim() >= 2]
    no_decay = [p for n, p in model.named_parameters() if p.dim() < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    t0, pos, history = time.time(), start, []
    for step in range(steps):
        if probe is not None and every and step % every == 0:
            model.eval()
            probe(step)
        model.train()
        f = (step + 1) / warmup if step < warmup else 0.1 + 0.45 * (1 + math.cos(math.pi * (step - warmup) /
                                                                                  max(1, steps - warmup)))
        for g in opt.param_groups:
            g["lr"] = lr * f
        idx = torch.arange(pos, pos + batch) % len(blocks)
        pos += batch
        x = blocks[idx]
        out = model(input_ids=x, labels=x, output_router_logits=router_logits) if router_logits else \
            model(input_ids=x, labels=x)
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        opt.zero_grad(set_to_none=True)
        history.append(float(out.loss.detach()))
        if step % 25 == 0 or step == steps - 1:
            el = time.time() - t0
            log(f"{label} step {step + 1}/{steps} loss {np.mean(history[-25:]):.3f} "
                f"({el / (step + 1):.2f} s/step, {el / 60:.1f} min)")
    model.eval()
    if probe is not None and every:
        probe(steps)
    return pos, history


def upcycle(dense, seed, noise, aux_coef):
    """Mixtral from a dense Llama: same attention, norms and embeddings; every expert the dense FFN
    plus Gaussian noise of `noise` times each matrix's standard deviation; a fresh router
    (N(0, 0.02), as Mixtral initialises it)."""
    cfg = transformers.MixtralConfig(**{k: v for k, v in DENSE.items()}, num_local_experts=EXPERTS,
                                     num_experts_per_tok=TOP_K, router_aux_loss_coef=aux_coef, router_jitter_noise=0.0,
                                     sliding_window=None)
    moe = transformers.MixtralForCausalLM(cfg)
    g = torch.Generator().manual_seed(seed)
    sd = dense.state_dict()
    new = moe.state_dict()
    with torch.no_grad():
        for name in new:
            if name in sd:
                new[name].copy_(sd[name])
        for layer in range(cfg.num_hidden_layers):
            p = f"model.layers.{layer}.mlp."
            gate, up, down = (sd[p + f"{m}_proj.weight"] for m in ("gate", "up", "down"))
            for e in range(EXPERTS):
                jit = [w + noise * w.std() * torch.randn(w.shape, generator=g) for w in (gate, up, down)]
                new[p + "experts.gate_up_proj"][e].copy_(torch.cat(jit[:2], dim=0))
                new[p + "experts.down_proj"][e].copy_(jit[2])
            new[p + "gate.weight"].copy_(0.02 * torch.randn(new[p + "gate.weight"].shape, generator=g))
    moe.load_state_dict(new)
    moe.tie_weights()
    return moe


# ---------------------------------------------------------------------------------------------
# evaluation

def bf16_rounded(model):
    import copy
    m = copy.deepcopy(model)
    with torch.no_grad():
        for p in m.parameters():
            p.copy_(p.to(torch.bfloat16).to(torch.float32))
    m.eval()
    return m


@torch.no_grad()
def evaluate(model, held_docs, moe):
    """Per held-out document, in SEQ-token windows: summed NLL, predicted-token ids, and for an MoE
    the per-layer top-k selection counts [layers, experts]."""
    nll, targets, counts = [], [], []
    for toks in held_docs:
        toks = torch.tensor(toks)
        s, tgt = 0.0, []
        cnt = np.zeros((DENSE["num_hidden_layers"], EXPERTS), dtype=np.int64) if moe else None
        for a in range(0, len(toks) - 1, SEQ):
            x = toks[a:a + SEQ + 1]
            if len(x) < 2:
                break
            out = model(input_ids=x[None, :-1], output_router_logits=True) if moe else model(input_ids=x[None, :-1])
            logp = torch.log_softmax(out.logits[0].float(), dim=-1)
            s -= float(logp.gather(1, x[1:, None]).sum())
            tgt.append(x[1:].numpy())
            if moe:
                for layer, rl in enumerate(out.router_logits):
                    ids = torch.topk(rl, TOP_K, dim=-1).indices.reshape(-1).numpy()
                    cnt[layer] += np.bincount(ids, minlength=EXPERTS)
        nll.append(s)
        targets.append(np.concatenate(tgt))
        counts.append(cnt)
    return np.array(nll), targets, (np.stack(counts) if moe else None)


def entropy_bits(p):
    p = np.clip(p, 1e-300, None)
    return -(p * np.log2(p)).sum(-1)


def js_statistic(counts, labels, n_domains):
    """Equal-weight Jensen-Shannon divergence (bits) among the domains' expert-usage distributions;
    counts [docs, layers, E], labels [..., docs] -> [..., layers]."""
    onehot = (labels[..., None, :] == np.arange(n_domains)[:, None]).astype(np.float64)  # [..., D, docs]
    per = np.einsum("...dn,nle->...dle", onehot, counts.astype(np.float64))  # [..., D, L, E]
    p = per / per.sum(-1, keepdims=True)
    return entropy_bits(p.mean(-3)) - entropy_bits(p).mean(-2)


def permutation_test(counts, labels, n_domains, n_perm, seed):
    obs = js_statistic(counts, labels, n_domains)
    rng = np.random.default_rng(seed)
    perms = np.stack([rng.permutation(labels) for _ in range(n_perm)])
    null = np.concatenate([js_statistic(counts, perms[i:i + 200], n_domains) for i in range(0, n_perm, 200)])
    p = (1 + (null >= obs[None, :] - 1e-12).sum(0)) / (1 + n_perm)
    return obs, null.mean(0), np.percentile(null, 95, axis=0), p


class RouterCounts:
    """Top-k choices of JetMoE's two routers per layer, from forward hooks on the gating modules
    (their fifth output is the router logits)."""

    def __init__(self, model):
        self.layers = len(model.model.layers)
        self.k = model.config.num_experts_per_tok
        self.e = model.config.num_local_experts
        self.reset()
        self.hooks = []
        for l, layer in enumerate(model.model.layers):
            for kind, router in (("attention", layer.self_attention.experts.router), ("ffn", layer.mlp.router)):
                self.hooks.append(router.register_forward_hook(self.hook(kind, l)))

    def hook(self, kind, l):
        def fn(mod, args, out):
            ids = torch.topk(out[4], self.k, dim=-1).indices.reshape(-1).numpy()
            self.counts[kind][l] += np.bincount(ids, minlength=self.e)
        return fn

    def reset(self):
        self.counts = {k: np.zeros((self.layers, self.e), dtype=np.int64) for k in ("attention", "ffn")}


@torch.no_grad()
def evaluate_jetmoe(model, held_docs):
    """Per held-out document: summed NLL, predicted tokens, and both routers' counts [layers, E]."""
    rc = RouterCounts(model)
    nll, targets, counts = [], [], {"attention": [], "ffn": []}
    for toks in held_docs:
        toks = torch.tensor(toks)
        rc.reset()
        s, tgt = 0.0, []
        for a in range(0, len(toks) - 1, SEQ):
            x = toks[a:a + SEQ + 1]
            if len(x) < 2:
                break
            logp = torch.log_softmax(model(input_ids=x[None, :-1]).logits[0].float(), dim=-1)
            s -= float(logp.gather(1, x[1:, None]).sum())
            tgt.append(x[1:].numpy())
        nll.append(s)
        targets.append(np.concatenate(tgt))
        for k in counts:
            counts[k].append(rc.counts[k].copy())
    for h in rc.hooks:
        h.remove()
    return np.array(nll), targets, {k: np.stack(v) for k, v in counts.items()}


def train_jetmoe(args, docs, versions, stats, t_start):
    """The JetMoE demo: the demo pair's tokenizer and training blocks, HF's JetMoeForCausalLM from
    scratch with its load-balancing loss over both routers."""
    tok_path = os.path.join(args.out, "moe", "tokenizer.json")
    tok = Tokenizer.from_file(tok_path) if os.path.exists(tok_path) else train_tokenizer(docs)
    train_ids = [tok.encode(t).ids for d, k, t, h in docs if not h]
    held = [(d, tok.encode(t).ids) for d, k, t, h in docs if h]
    blocks = make_blocks(train_ids, args.seed)
    counts = np.bincount(np.concatenate([np.asarray(t[1:]) for t in train_ids]), minlength=TOKENIZER_VOCAB)
    unigram_logp = np.log((counts + 1.0) / (counts.sum() + TOKENIZER_VOCAB))
    cfg = transformers.JetMoeConfig(**JETMOE, aux_loss_coef=args.aux_coef)
    model = transformers.JetMoeForCausalLM(cfg)
    _, hist = train(model, blocks, 0, args.jetmoe_steps, args.batch, args.dense_lr, 50, "jetmoe", router_logits=True)
    out = os.path.join(args.out, "jetmoe")
    save_checkpoint(model, tok, out)
    m = transformers.AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    held_tok = [t for d, t in held]
    labels = np.array([DOMAINS.index(d) for d, t in held])
    nll, tgts, cnt = evaluate_jetmoe(m, held_tok)
    n = sum(len(t) for t in tgts)
    uni = -sum(unigram_logp[t].sum() for t in tgts)
    metrics = {"packages": versions, "corpus": stats, "seq": SEQ, "batch": args.batch, "steps": args.jetmoe_steps,
               "lr": args.dense_lr, "aux_coef": args.aux_coef, "seed": args.seed, "threads": args.threads,
               "config": JETMOE, "train_loss_last25": float(np.mean(hist[-25:])),
               "loss_every_10_steps": [float(np.mean(hist[i:i + 10])) for i in range(0, len(hist), 10)],
               "heldout": {"perplexity": float(math.exp(nll.sum() / n)), "unigram_perplexity": float(math.exp(uni / n)),
                           "tokens": int(n)},
               "js": {}}
    for kind, c in cnt.items():
        obs, null_mean, null95, p = permutation_test(c, labels, len(DOMAINS), args.permutations, args.seed)
        metrics["js"][kind] = {"js_bits": obs.tolist(), "permuted_mean": null_mean.tolist(),
                               "permuted_95th": null95.tolist(), "p_value": p.tolist(),
                               "permutations": args.permutations}
        log(f"JS {kind}: " + " ".join(f"L{l}: {o:.4f} (perm {mm:.4f}, p={pv:.4f})"
                                      for l, (o, mm, pv) in enumerate(zip(obs, null_mean, p))))
    metrics["minutes"] = round((time.time() - t_start) / 60, 1)
    log("jetmoe", json.dumps(metrics["heldout"]))
    with open(os.path.join(args.out, "metrics-jetmoe.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    log(f"done in {metrics['minutes']} min")


def save_checkpoint(model, tok, out):
    if os.path.isdir(out):
        shutil.rmtree(out)
    import copy
    m = copy.deepcopy(model).to(torch.bfloat16)  # round to nearest, as bf16_rounded does
    m.save_pretrained(out)
    tok.save(os.path.join(out, "tokenizer.json"))
    with open(os.path.join(out, "tokenizer_config.json"), "w") as f:
        json.dump({"tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<s>", "eos_token": "</s>",
                   "model_max_length": DENSE["max_position_embeddings"]}, f, indent=2)
    gen = os.path.join(out, "generation_config.json")
    if os.path.exists(gen):
        os.remove(gen)


def sample_prompts(docs, per_domain=2, chars=240):
    """What the app runs on start: from held-out documents, the first prose paragraph (rewrapped into
    one line; tables and command listings skipped) or, for code, the first function or class."""
    out = []
    for d in DOMAINS:
        found = 0
        for k, t in sorted((k, t) for dd, k, t, h in docs if dd == d and h):
            if d == "code":
                m = re.search(r"^(?:def|class) .*?(?=\n\S|\Z)", t, re.M | re.S)
                text = m.group(0).strip() if m else ""
                text = "\n".join(text.split("\n")[:8])
            else:
                text = ""
                for para in t.split("\n\n")[1:]:
                    para = " ".join(para.split())
                    letters = sum(c.isalpha() or c == " " for c in para)
                    if len(para) >= 80 and "|" not in para and letters > 0.9 * len(para):
                        text = para
                        break
                if len(text) > chars:
                    cut = text.rfind(". ", 0, chars)
                    text = text[:cut + 1] if cut > 40 else text[:chars]
            if len(text) >= 40:
                out.append({"text": text, "domain": d, "source": k})
                found += 1
            if found == per_domain:
                break
    return out


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--work", default=os.path.join(REPO, "build", "demo-work"))
    ap.add_argument("--out", default=HERE)
    ap.add_argument("--dense-steps", type=int, default=1000)
    ap.add_argument("--moe-steps", type=int, default=1000)
    ap.add_argument("--dense-lr", type=float, default=3e-3)
    ap.add_argument("--moe-lr", type=float, default=2e-3)
    ap.add_argument("--batch", type=int, default=16)
    ap.add_argument("--noise", type=float, default=0.01)
    ap.add_argument("--aux-coef", type=float, default=0.1,
                    help="the load-balancing loss coefficient (Mixtral-8x7B's config has 0.02; 0.02 and 0.001 "
                         "left the first layers as unbalanced, see README.md)")
    ap.add_argument("--probe-every", type=int, default=250,
                    help="held-out routing statistics every N MoE steps (0: only at the end)")
    ap.add_argument("--permutations", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=1234)
    ap.add_argument("--threads", type=int, default=os.cpu_count())
    ap.add_argument("--model", choices=["pair", "jetmoe"], default="pair",
                    help="pair: the dense model and its upcycled MoE; jetmoe: the JetMoE demo")
    ap.add_argument("--jetmoe-steps", type=int, default=1500)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)
    t_start = time.time()
    os.makedirs(args.work, exist_ok=True)

    root, versions = fetch_packages(args.work)
    docs = build_corpus(root)
    stats = {d: {"train_docs": sum(1 for x in docs if x[0] == d and not x[3]),
                 "held_out_docs": sum(1 for x in docs if x[0] == d and x[3]),
                 "train_chars": sum(len(x[2]) for x in docs if x[0] == d and not x[3])} for d in DOMAINS}
    log("corpus", json.dumps(stats))
    if args.model == "jetmoe":
        return train_jetmoe(args, docs, versions, stats, t_start)

    tok = train_tokenizer(docs)
    train_docs = [(d, tok.encode(t).ids) for d, k, t, h in docs if not h]
    held = [(d, tok.encode(t).ids) for d, k, t, h in docs if h]
    train_ids = [t for d, t in train_docs]
    for d in DOMAINS:
        stats[d]["train_tokens"] = sum(len(t) for dd, t in train_docs if dd == d)
        stats[d]["held_out_tokens"] = sum(len(t) for dd, t in held if dd == d)
    blocks = make_blocks(train_ids, args.seed)
    log(f"tokenizer: {tok.get_vocab_size()} tokens; {len(blocks)} training blocks of {SEQ}")

    # unigram baseline from the training tokens (add-one smoothing), on the tokens the models predict
    counts = np.bincount(np.concatenate([np.asarray(t[1:]) for t in train_ids]), minlength=TOKENIZER_VOCAB)
    unigram_logp = np.log((counts + 1.0) / (counts.sum() + TOKENIZER_VOCAB))

    cfg = transformers.LlamaConfig(**DENSE)
    dense = transformers.LlamaForCausalLM(cfg)
    pos, dense_hist = train(dense, blocks, 0, args.dense_steps, args.batch, args.dense_lr, 50, "dense")
    moe = upcycle(dense, args.seed + 1, args.noise, args.aux_coef)
    moe_init = bf16_rounded(moe)
    held_tok = [t for d, t in held]
    labels = np.array([DOMAINS.index(d) for d, t in held])
    trajectory = []

    def probe(step):
        """Held-out perplexity and domain JS (observed, permuted mean) while the MoE trains."""
        nll, tgts, cnt = evaluate(moe, held_tok, True)
        obs, null_mean, _, _ = permutation_test(cnt, labels, len(DOMAINS), 200, args.seed)
        load = cnt.sum(0) / cnt.sum(0).sum(-1, keepdims=True)
        trajectory.append({"step": step, "perplexity": float(math.exp(nll.sum() / sum(len(t) for t in tgts))),
                           "js_bits": obs.tolist(), "permuted_mean": null_mean.tolist(),
                           "load_entropy_bits": entropy_bits(load).tolist()})
        log(f"probe at MoE step {step}: ppl {trajectory[-1]['perplexity']:.2f}, JS " +
            " ".join(f"{o:.3f}/{m:.3f}" for o, m in zip(obs, null_mean)) + ", load entropy " +
            " ".join(f"{h:.2f}" for h in trajectory[-1]["load_entropy_bits"]))
    _, moe_hist = train(moe, blocks, pos, args.moe_steps, args.batch, args.moe_lr, 30, "moe", router_logits=True,
                        every=args.probe_every, probe=probe)

    save_checkpoint(dense, tok, os.path.join(args.out, "dense"))
    save_checkpoint(moe, tok, os.path.join(args.out, "moe"))
    metrics = {"packages": versions, "corpus": stats, "seq": SEQ, "batch": args.batch,
               "dense_steps": args.dense_steps, "moe_steps": args.moe_steps, "dense_lr": args.dense_lr,
               "moe_lr": args.moe_lr, "noise": args.noise, "aux_coef": args.aux_coef, "seed": args.seed,
               "threads": args.threads, "experts": EXPERTS, "top_k": TOP_K,
               "moe_trajectory": trajectory,
               "loss_every_10_steps": {name: [float(np.mean(h[i:i + 10])) for i in range(0, len(h), 10)]
                                       for name, h in (("dense", dense_hist), ("moe", moe_hist))},
               "train_loss_last25": {"dense": float(np.mean(dense_hist[-25:])), "moe": float(np.mean(moe_hist[-25:]))}}
    ppl = {}
    for name, path, is_moe in (("dense", "dense", False), ("moe", "moe", True)):
        m = transformers.AutoModelForCausalLM.from_pretrained(os.path.join(args.out, path), dtype=torch.float32)
        m.eval()
        nll, tgts, cnt = evaluate(m, held_tok, is_moe)
        n = sum(len(t) for t in tgts)
        uni = -sum(unigram_logp[t].sum() for t in tgts)
        ppl[name] = {"perplexity": float(math.exp(nll.sum() / n)), "unigram_perplexity": float(math.exp(uni / n)),
                     "tokens": int(n), "per_domain": {}}
        for k, d in enumerate(DOMAINS):
            sel = labels == k
            nd = sum(len(tgts[i]) for i in np.flatnonzero(sel))
            uni_d = -sum(unigram_logp[tgts[i]].sum() for i in np.flatnonzero(sel))
            ppl[name]["per_domain"][d] = {"perplexity": float(math.exp(nll[sel].sum() / nd)),
                                          "unigram_perplexity": float(math.exp(uni_d / nd))}
        if is_moe:
            trained_counts = cnt
        log(name, json.dumps(ppl[name]))
    metrics["heldout"] = ppl
    _, _, init_counts = evaluate(moe_init, held_tok, True)
    metrics["js"] = {}
    for name, c in (("trained", trained_counts), ("upcycled", init_counts)):
        obs, null_mean, null95, p = permutation_test(c, labels, len(DOMAINS), args.permutations, args.seed)
        usage = {d: (c[labels == k].sum(0) / c[labels == k].sum(0).sum(-1, keepdims=True)).round(4).tolist()
                 for k, d in enumerate(DOMAINS)}
        metrics["js"][name] = {"js_bits": obs.tolist(), "permuted_mean": null_mean.tolist(),
                               "permuted_95th": null95.tolist(), "p_value": p.tolist(),
                               "permutations": args.permutations, "usage": usage}
        log(f"JS {name}: " + " ".join(f"L{l}: {o:.4f} (perm {m:.4f}, p={pv:.4f})"
                                      for l, (o, m, pv) in enumerate(zip(obs, null_mean, p))))
    with open(os.path.join(args.out, "prompts.jsonl"), "w", encoding="utf-8") as f:
        for p in sample_prompts(docs):
            f.write(json.dumps(p, ensure_ascii=False) + "\n")
    metrics["minutes"] = round((time.time() - t_start) / 60, 1)
    with open(os.path.join(args.out, "metrics.json"), "w") as f:
        json.dump(metrics, f, indent=1)
    log(f"done in {metrics['minutes']} min")


if __name__ == "__main__":
    sys.exit(main())

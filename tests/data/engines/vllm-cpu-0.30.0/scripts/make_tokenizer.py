from tokenizers import Tokenizer, models, pre_tokenizers, decoders
from transformers import PreTrainedTokenizerFast
vocab = {f"t{i}": i for i in range(511)}
vocab["<unk>"] = 511
tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
tok.decoder = decoders.WordPiece(prefix="##")  # joins with spaces
fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="<unk>", eos_token="t1", bos_token="t2", pad_token="t0")
fast.chat_template = "{% for m in messages %}t3 {{ m['content'] }} {% endfor %}t4"
for d in ("tiny_qwen3moe", "tiny_olmoe"):
    fast.save_pretrained(f"/tmp/research26/{d}")
print("ok")

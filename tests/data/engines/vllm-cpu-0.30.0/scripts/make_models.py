import torch, sys
from transformers import Qwen3MoeConfig, Qwen3MoeForCausalLM, OlmoeConfig, OlmoeForCausalLM
torch.manual_seed(0)
cfg = Qwen3MoeConfig(vocab_size=512, hidden_size=128, intermediate_size=128, moe_intermediate_size=32,
    num_hidden_layers=3, num_attention_heads=2, num_key_value_heads=1, head_dim=64,
    num_experts=8, num_experts_per_tok=2, decoder_sparse_step=1, mlp_only_layers=[1],
    max_position_embeddings=512, norm_topk_prob=True, torch_dtype="bfloat16", tie_word_embeddings=False)
m = Qwen3MoeForCausalLM(cfg).to(torch.bfloat16)
m.save_pretrained("/tmp/research26/tiny_qwen3moe")
cfg2 = OlmoeConfig(vocab_size=512, hidden_size=128, intermediate_size=32, num_hidden_layers=2,
    num_attention_heads=2, num_key_value_heads=2, num_experts=8, num_experts_per_tok=2,
    max_position_embeddings=512, torch_dtype="bfloat16")
m2 = OlmoeForCausalLM(cfg2).to(torch.bfloat16)
m2.save_pretrained("/tmp/research26/tiny_olmoe")
print("ok")

import json
p="/tmp/research26/tiny_olmoe/config.json"; c=json.load(open(p)); c["eos_token_id"]=1; c["pad_token_id"]=0; c["bos_token_id"]=2; json.dump(c,open(p,"w"),indent=1)
p="/tmp/research26/tiny_olmoe/generation_config.json"; c=json.load(open(p)); c["eos_token_id"]=1; c["pad_token_id"]=0; c["bos_token_id"]=2; json.dump(c,open(p,"w"),indent=1)

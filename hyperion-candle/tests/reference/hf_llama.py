"""Writes a small random-weight Llama checkpoint with Hugging Face
transformers, as `save_pretrained` writes it (config.json, safetensors,
sharded when asked), a word-level tokenizer.json, and the reference run:
greedy decoding with transformers' own forward pass (float32, KV cache),
every step's logits.

    hf_llama.py OUT_DIR [--dtype float32|bfloat16|float16] [--tie]
                [--shard-size SIZE] [--llama3-rope] [--prompt 1,2,3] [--tokens N]

OUT_DIR/reference.json: {"prompt": [...], "tokens": [...], "logits": [[...], ...]},
logits[i] being the logits the i-th generated token was chosen from.
"""

import argparse
import json
import os

import torch
from tokenizers import Tokenizer, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM

VOCAB = 384


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("out")
    ap.add_argument("--dtype", default="float32")
    ap.add_argument("--tie", action="store_true")
    ap.add_argument("--shard-size", default=None)
    ap.add_argument("--llama3-rope", action="store_true")
    ap.add_argument("--prompt", default="1,17,42,99,7")
    ap.add_argument("--tokens", type=int, default=32)
    args = ap.parse_args()

    rope = {"rope_type": "default", "rope_theta": 50000.0}
    if args.llama3_rope:
        rope = {
            "rope_type": "llama3",
            "rope_theta": 500000.0,
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 16,
        }
    config = LlamaConfig(
        vocab_size=VOCAB,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=6,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=512,
        rms_norm_eps=1e-5,
        rope_parameters=rope,
        tie_word_embeddings=args.tie,
        # Larger than the default 0.02, so that logits are far from ties and
        # greedy decoding is not decided by rounding.
        initializer_range=0.25,
        eos_token_id=2,
        bos_token_id=1,
    )
    torch.manual_seed(1234)
    model = LlamaForCausalLM(config).eval()
    # RMS norm weights start at 1: make them random too, so a mix-up of
    # two norms shows.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)

    save_kwargs = {}
    if args.shard_size:
        save_kwargs["max_shard_size"] = args.shard_size
    dtype = getattr(torch, args.dtype)
    model.to(dtype).save_pretrained(args.out, **save_kwargs)
    model.to(torch.float32)

    vocab = {f"w{i}": i for i in range(VOCAB)}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="w0"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    tok.save(os.path.join(args.out, "tokenizer.json"))

    # The reference run, in float32 from the weights as saved (rounded to
    # the saved dtype first).
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(p.to(dtype).to(torch.float32))
        prompt = [int(t) for t in args.prompt.split(",")]
        out = model(input_ids=torch.tensor([prompt]), use_cache=True)
        past, logits = out.past_key_values, out.logits[0, -1]
        tokens, all_logits = [], []
        for step in range(args.tokens):
            all_logits.append(logits.tolist())
            nxt = int(torch.argmax(logits))
            tokens.append(nxt)
            if step + 1 == args.tokens:
                break
            out = model(
                input_ids=torch.tensor([[nxt]]), past_key_values=past, use_cache=True
            )
            past, logits = out.past_key_values, out.logits[0, -1]
    with open(os.path.join(args.out, "reference.json"), "w") as f:
        json.dump({"prompt": prompt, "tokens": tokens, "logits": all_logits}, f)


if __name__ == "__main__":
    main()

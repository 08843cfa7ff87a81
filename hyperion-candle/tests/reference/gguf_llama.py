"""Writes a small random-weight llama GGUF with the `gguf` package's own
writer and quantizers, its blocks' matrices in a mix of GGML types (those
the streamed model multiplies in place, and those it copies into candle).

    gguf_llama.py OUT.gguf

Block b's seven matrices take the types TYPES[(b + i) % len(TYPES)], so
every type appears in every role across the blocks.
"""

import sys

import numpy as np
import gguf
from gguf import GGMLQuantizationType as T
from gguf import quants

HIDDEN, FFN, HEADS, KV_HEADS, VOCAB, BLOCKS = 64, 192, 4, 2, 256, 7
TYPES = [T.Q4_0, T.Q4_1, T.Q5_0, T.Q5_1, T.Q8_0, T.F16, T.F32]


def main():
    out = sys.argv[1]
    rng = np.random.default_rng(7)
    head_dim = HIDDEN // HEADS
    w = gguf.GGUFWriter(out, "llama")
    w.add_block_count(BLOCKS)
    w.add_context_length(512)
    w.add_embedding_length(HIDDEN)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_dimension_count(head_dim)
    w.add_rope_freq_base(20000.0)
    w.add_layer_norm_rms_eps(1e-5)

    def add(name, rows, cols, qtype, scale=0.25):
        data = (rng.standard_normal((rows, cols)) * scale).astype(np.float32)
        if qtype == T.F32:
            w.add_tensor(name, data)
        elif qtype == T.F16:
            w.add_tensor(name, data.astype(np.float16))
        else:
            q = quants.quantize(data, qtype)
            w.add_tensor(name, q, raw_shape=q.shape, raw_dtype=qtype)

    def norm(name):
        w.add_tensor(name, rng.uniform(0.5, 1.5, HIDDEN).astype(np.float32))

    add("token_embd.weight", VOCAB, HIDDEN, T.Q8_0, scale=1.0)
    for b in range(BLOCKS):
        shapes = [
            ("attn_q.weight", HIDDEN, HIDDEN),
            ("attn_k.weight", KV_HEADS * head_dim, HIDDEN),
            ("attn_v.weight", KV_HEADS * head_dim, HIDDEN),
            ("attn_output.weight", HIDDEN, HIDDEN),
            ("ffn_gate.weight", FFN, HIDDEN),
            ("ffn_up.weight", FFN, HIDDEN),
            ("ffn_down.weight", HIDDEN, FFN),
        ]
        for i, (suffix, rows, cols) in enumerate(shapes):
            add(f"blk.{b}.{suffix}", rows, cols, TYPES[(b + i) % len(TYPES)])
        norm(f"blk.{b}.attn_norm.weight")
        norm(f"blk.{b}.ffn_norm.weight")
    norm("output_norm.weight")
    add("output.weight", VOCAB, HIDDEN, T.Q4_0)

    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


if __name__ == "__main__":
    main()

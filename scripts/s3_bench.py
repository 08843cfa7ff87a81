"""Helpers of scripts/bench-s3.sh, run with the venv's python.

  s3_bench.py write PATH BYTES LAYERS   a safetensors file of LAYERS blocks
  s3_bench.py put ENDPOINT BUCKET KEY PATH
  s3_bench.py runai URL                 Run:ai's streamer reads the object;
                                        prints {"mb_s", "seconds", "bytes", "peak_rss_bytes"}
"""
import json
import os
import resource
import sys
import time


def write(path, size, layers):
    import numpy as np
    from safetensors.numpy import save_file

    per = size // layers // 4  # f32 elements per layer
    rng = np.random.default_rng(0)
    tensors = {
        f"model.layers.{i}.mlp.weight": rng.standard_normal(per, dtype=np.float32)
        for i in range(layers)
    }
    save_file(tensors, path)


def put(endpoint, bucket, key, path):
    import boto3

    s3 = boto3.client(
        "s3",
        endpoint_url=endpoint,
        aws_access_key_id="bench",
        aws_secret_access_key="bench-secret",
        region_name="us-east-1",
    )
    try:
        s3.create_bucket(Bucket=bucket)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass
    s3.upload_file(path, bucket, key)


def runai(url):
    from runai_model_streamer import SafetensorsStreamer

    start = time.perf_counter()
    total = 0
    with SafetensorsStreamer() as streamer:
        streamer.stream_file(url)
        for _name, t in streamer.get_tensors():
            total += t.nbytes
            float(t.view(-1)[0])  # touch it, as the other loaders do
    secs = time.perf_counter() - start
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    print(json.dumps({"mb_s": total / 1e6 / secs, "seconds": secs, "bytes": total, "peak_rss_bytes": rss}))


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "write":
        write(args[0], int(args[1]), int(args[2]))
    elif cmd == "put":
        put(*args)
    elif cmd == "runai":
        runai(args[0])
    else:
        sys.exit(f"unknown command {cmd}")

//! The ceiling of an S3-compatible server for one object: the object read
//! as plain ranged GETs, `CHUNK` bytes each, `P` in flight, by a bare
//! client (`object_store`'s S3 client from the `AWS_*` environment, signed
//! requests, each body counted and dropped: no budget, no buffer, no
//! engine), for each `P` of the list; prints the best MB/s as JSON. What
//! `scripts/bench-s3.sh` compares Hyperion's cold stream with.
//!
//!   AWS_ENDPOINT_URL=… cargo run --release --features object-store --example s3_ceiling -- \
//!       s3://bucket/key [CHUNK_BYTES] [P,P,...]

use std::time::Instant;

use futures::StreamExt;
use object_store::aws::AmazonS3Builder;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let url = args
        .next()
        .ok_or("usage: s3_ceiling s3://bucket/key [CHUNK] [P,P,...]")?;
    let chunk: u64 = args.next().map_or(Ok(8 << 20), |c| c.parse())?;
    let parallel: Vec<usize> = args
        .next()
        .unwrap_or_else(|| "1,2,4,8,16".into())
        .split(',')
        .map(|p| p.parse())
        .collect::<Result<_, _>>()?;
    let (bucket, key) = url
        .strip_prefix("s3://")
        .and_then(|r| r.split_once('/'))
        .ok_or("expected s3://bucket/key")?;
    let _ = rustls::crypto::ring::default_provider().install_default();
    let s3 = AmazonS3Builder::from_env()
        .with_bucket_name(bucket)
        .with_allow_http(true)
        .build()?;
    let location = object_store::path::Path::from(key);
    let size = s3.head(&location).await?.size;
    let mut runs = Vec::new();
    for &p in &parallel {
        let start = Instant::now();
        let ranges: Vec<std::ops::Range<u64>> = (0..size)
            .step_by(chunk as usize)
            .map(|at| at..(at + chunk).min(size))
            .collect();
        let got: Vec<u64> = futures::stream::iter(ranges)
            .map(|range| {
                let (s3, location) = (&s3, &location);
                async move {
                    let options = GetOptions {
                        range: Some(GetRange::Bounded(range)),
                        ..GetOptions::default()
                    };
                    let mut body = s3.get_opts(location, options).await?.into_stream();
                    let mut n = 0u64;
                    while let Some(piece) = body.next().await {
                        n += piece?.len() as u64;
                    }
                    Ok::<u64, object_store::Error>(n)
                }
            })
            .buffer_unordered(p)
            .collect::<Vec<_>>()
            .await
            .into_iter()
            .collect::<Result<_, _>>()?;
        let bytes: u64 = got.iter().sum();
        assert_eq!(bytes, size, "short read");
        let secs = start.elapsed().as_secs_f64();
        runs.push((p, size as f64 / 1e6 / secs));
    }
    let best = runs.iter().map(|r| r.1).fold(0.0, f64::max);
    let runs: Vec<String> = runs
        .iter()
        .map(|(p, mb_s)| format!("{{\"parallel\":{p},\"mb_s\":{mb_s:.1}}}"))
        .collect();
    println!(
        "{{\"bytes\":{size},\"chunk\":{chunk},\"best_mb_s\":{best:.1},\"runs\":[{}]}}",
        runs.join(",")
    );
    Ok(())
}

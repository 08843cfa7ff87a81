//! An async serving stack on Hyperion: an HTTP server (axum) whose requests
//! each run a forward pass over one shared model, many at once, plus a small
//! load generator on loopback.
//!
//! It shows that concurrent requests share reads (single flight: far fewer
//! disk reads than layer fetches) and that memory stays within the budget
//! under load. Prints requests/s, reads per request, peak memory against the
//! budget, and the process's peak RSS.
//!
//! ```sh
//! cargo run --release --example serve [-- CLIENTS REQUESTS_PER_CLIENT]
//! ```

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::routing::get;
use axum::{Json, Router};
use futures::StreamExt;
use hyperion::{MappedModel, MmapConfig};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};

const WIDTH: usize = 256;

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut args = std::env::args().skip(1);
    let clients: usize = args.next().map_or(Ok(32), |s| s.parse())?;
    let per_client: usize = args.next().map_or(Ok(8), |s| s.parse())?;

    let dir = tempfile::tempdir_in(".")?;
    let path = dir.path().join("served.tmai");
    let spec = hyperion::synth::SynthSpec {
        layers: 32,
        layer_size: 4 << 20,
        ..Default::default()
    };
    hyperion::synth::write(&path, &spec)?;
    let budget = 48u64 << 20; // the model is 128 MiB
    let model = MappedModel::open(
        &path,
        MmapConfig {
            max_cache_size: budget,
            // Many requests hold a layer each: let them queue for memory.
            memory_wait_timeout: Duration::from_secs(30),
            ..MmapConfig::default()
        },
    )
    .await?;

    let app = Router::new()
        .route("/forward", get(forward))
        .with_state(Arc::new(model.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await?;
    let addr = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });

    println!(
        "serving a {} MiB model through a {} MiB budget on {addr}; {clients} clients × {per_client} requests",
        (spec.layers as u64 * spec.layer_size) >> 20,
        budget >> 20
    );
    let start = Instant::now();
    let mut tasks = Vec::new();
    for _ in 0..clients {
        tasks.push(tokio::spawn(async move {
            let mut conn = BufReader::new(TcpStream::connect(addr).await?);
            let mut bodies = Vec::new();
            for _ in 0..per_client {
                bodies.push(get_forward(&mut conn).await?);
            }
            Ok::<_, std::io::Error>(bodies)
        }));
    }
    let mut checksums = Vec::new();
    for t in tasks {
        checksums.extend(t.await??);
    }
    let wall = start.elapsed();
    let requests = checksums.len();
    let stats = model.stats();
    let fetches = requests as u64 * model.layer_count() as u64;
    assert!(
        checksums.windows(2).all(|w| w[0] == w[1]),
        "every request computes the same result"
    );
    println!(
        "{requests} requests in {:.2} s: {:.1} requests/s",
        wall.as_secs_f64(),
        requests as f64 / wall.as_secs_f64()
    );
    println!(
        "{fetches} layer fetches served by {} disk reads ({} joined a read in flight, {} hits)",
        stats.reads, stats.coalesced, stats.hits
    );
    println!(
        "peak memory {:.1} MiB of the {} MiB budget; process peak RSS {} MiB",
        stats.peak_memory as f64 / (1 << 20) as f64,
        budget >> 20,
        peak_rss_kib() >> 10
    );
    assert!(stats.peak_memory <= budget);
    Ok(())
}

/// One request: a forward pass over every layer; returns a checksum of the
/// final activations.
async fn forward(State(model): State<Arc<MappedModel>>) -> Json<u32> {
    let mut x = vec![1.0f32 / WIDTH as f32; WIDTH];
    let mut layers = model.stream_layers(0..model.layer_count(), Some(1));
    while let Some(layer) = layers.next().await {
        let layer = layer.expect("layers load");
        let w = layer
            .tensors()
            .next()
            .and_then(|t| t.as_f32())
            .expect("f32 weights");
        let mut acc = vec![0.0f32; WIDTH];
        for (r, row) in w.chunks_exact(WIDTH).enumerate() {
            acc[r % WIDTH] += row.iter().zip(&x).map(|(a, b)| a * b).sum::<f32>();
        }
        x = acc.iter().map(|v| v.tanh()).collect();
    }
    Json(x.iter().sum::<f32>().to_bits())
}

/// A minimal HTTP/1.1 keep-alive GET of /forward; returns the body.
async fn get_forward(conn: &mut BufReader<TcpStream>) -> std::io::Result<String> {
    conn.get_mut()
        .write_all(b"GET /forward HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .await?;
    let mut length = 0;
    loop {
        let mut line = String::new();
        conn.read_line(&mut line).await?;
        if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
            length = v.trim().parse().unwrap_or(0);
        }
        if line == "\r\n" || line.is_empty() {
            break;
        }
    }
    let mut body = vec![0; length];
    conn.read_exact(&mut body).await?;
    Ok(String::from_utf8_lossy(&body).into_owned())
}

fn peak_rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("VmHWM:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        })
        .unwrap_or(0)
}

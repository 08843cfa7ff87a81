//! A real S3-compatible server on loopback for the object-store tests, the
//! client that puts test models into it, and a fault-injecting HTTP proxy
//! to put in front of it.
//!
//! The server is moto's (`scripts/s3-server.sh`, installed into the venv by
//! `scripts/python-env.sh`): started once per test binary, it lives as long
//! as the test process (its stdin is a pipe this process holds; it exits
//! when the pipe closes). Outside CI, the tests skip with a message when
//! the package registry cannot be reached; under `CI=true` any failure to
//! start it fails them (`common::python`).
#![allow(dead_code)]

use std::collections::HashMap;
use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::Duration;

use hyperion::{MmapConfig, ObjectStoreConfig};
use object_store::aws::{AmazonS3, AmazonS3Builder};
use object_store::{ObjectStoreExt, PutPayload};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader as AsyncBufReader};
use tokio::net::{TcpListener, TcpStream};

use crate::common;

/// The running server: its endpoint, and the handles that keep it alive.
pub struct Server {
    pub endpoint: String,
    _child: Mutex<Child>,
    _stdin: Mutex<ChildStdin>,
}

/// The server of this test binary, started on first use; `None` (with a
/// printed SKIPPED message) only outside CI when the package registry
/// cannot be reached.
pub fn server() -> Option<&'static Server> {
    static SERVER: OnceLock<Server> = OnceLock::new();
    common::python()?;
    Some(SERVER.get_or_init(|| {
        let script = common::repo_root().join("scripts/s3-server.sh");
        let mut child = Command::new("bash")
            .arg(script)
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start scripts/s3-server.sh");
        let stdin = child.stdin.take().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("read the server's endpoint");
        let endpoint = line.trim().to_string();
        assert!(
            endpoint.starts_with("http://127.0.0.1:"),
            "scripts/s3-server.sh did not print an endpoint (got {line:?})"
        );
        Server {
            endpoint,
            _child: Mutex::new(child),
            _stdin: Mutex::new(stdin),
        }
    }))
}

/// Credentials for the test server (moto takes any).
pub const CREDENTIALS: &[(&str, &str)] = &[
    ("aws_access_key_id", "hyperion-test"),
    ("aws_secret_access_key", "hyperion-test-secret"),
    ("aws_region", "us-east-1"),
];

/// The object-store settings that reach `endpoint` with the test
/// credentials, and retry quickly (the faults tests wait for retries).
pub fn store_config(endpoint: &str) -> ObjectStoreConfig {
    ObjectStoreConfig {
        endpoint: Some(endpoint.to_string()),
        options: CREDENTIALS
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        retry_backoff: Duration::from_millis(10),
        max_backoff: Duration::from_millis(200),
        retry_timeout: Duration::from_secs(20),
        ..ObjectStoreConfig::default()
    }
}

/// A model config with `budget` reading from `endpoint`.
pub fn config(endpoint: &str, budget: u64) -> MmapConfig {
    MmapConfig {
        max_cache_size: budget,
        object_store: store_config(endpoint),
        ..MmapConfig::default()
    }
}

/// A fresh bucket on the server (names are unique per process and call).
pub async fn bucket(server: &Server) -> String {
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let name = format!(
        "hyperion-{}-{}",
        std::process::id(),
        NEXT.fetch_add(1, SeqCst)
    );
    // object_store cannot create buckets: a plain PUT /bucket (moto does
    // not check signatures).
    let addr = server.endpoint.trim_start_matches("http://");
    let mut conn = TcpStream::connect(addr).await.unwrap();
    let request = format!(
        "PUT /{name} HTTP/1.1\r\nHost: {addr}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.unwrap();
    assert!(
        answer.starts_with("HTTP/1.1 200"),
        "create bucket {name}: {answer}"
    );
    name
}

/// A client for `bucket` (to put models in, or replace them).
pub fn client(server: &Server, bucket: &str) -> AmazonS3 {
    // The provider Hyperion installs when it connects, if this runs first.
    let _ = rustls::crypto::ring::default_provider().install_default();
    let mut b = AmazonS3Builder::new()
        .with_endpoint(&server.endpoint)
        .with_allow_http(true)
        .with_bucket_name(bucket);
    for (k, v) in CREDENTIALS {
        b = b.with_config(k.parse().unwrap(), *v);
    }
    b.build().unwrap()
}

/// Puts the local file `file` at `key` of `bucket`; returns its URL.
pub async fn upload(server: &Server, bucket: &str, key: &str, file: &Path) -> String {
    let bytes = std::fs::read(file).unwrap();
    put(server, bucket, key, bytes).await
}

/// Puts `bytes` at `key` of `bucket`; returns its URL.
pub async fn put(server: &Server, bucket: &str, key: &str, bytes: Vec<u8>) -> String {
    client(server, bucket)
        .put(&key.into(), PutPayload::from(bytes))
        .await
        .unwrap();
    format!("s3://{bucket}/{key}")
}

/// One request as the proxy saw it.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: String,
    pub target: String,
    pub headers: HashMap<String, String>,
}

/// What the proxy does with a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// Forward it, and its answer.
    Pass,
    /// Answer with this status and an S3 error body, without forwarding.
    Status(u16),
    /// Forward it, send the answer's head and this many bytes of its body,
    /// then close the connection: a connection dropped mid-range.
    CutAfter(usize),
    /// Forward it after this long.
    Delay(Duration),
}

/// Decides each request's fault: given the request and how many requests
/// came before it.
pub type Rule = Arc<dyn Fn(&Seen, usize) -> Fault + Send + Sync>;

/// An HTTP/1.1 proxy on loopback in front of the server: it logs every
/// request and applies a [`Rule`] to each. One upstream connection per
/// request (`Connection: close`), so every answer ends at a known byte.
pub struct Proxy {
    pub endpoint: String,
    pub seen: Arc<Mutex<Vec<Seen>>>,
    rule: Arc<Mutex<Rule>>,
}

impl Proxy {
    pub async fn start(server: &Server) -> Proxy {
        let upstream = server.endpoint.trim_start_matches("http://").to_string();
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();
        let rule: Arc<Mutex<Rule>> = Arc::new(Mutex::new(Arc::new(|_: &Seen, _| Fault::Pass)));
        let (s, r) = (Arc::clone(&seen), Arc::clone(&rule));
        tokio::spawn(async move {
            while let Ok((conn, _)) = listener.accept().await {
                let (s, r, up) = (Arc::clone(&s), Arc::clone(&r), upstream.clone());
                tokio::spawn(async move {
                    let _ = serve(conn, &up, &s, &r).await;
                });
            }
        });
        Proxy {
            endpoint,
            seen,
            rule,
        }
    }

    /// Applies `rule` to the requests from now on.
    pub fn set_rule(&self, rule: impl Fn(&Seen, usize) -> Fault + Send + Sync + 'static) {
        *self.rule.lock().unwrap() = Arc::new(rule);
    }

    /// How many requests of `method` were seen.
    pub fn count(&self, method: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.method == method)
            .count()
    }

    pub fn clear(&self) {
        self.seen.lock().unwrap().clear();
    }
}

/// Serves one client connection, request by request.
async fn serve(
    conn: TcpStream,
    upstream: &str,
    seen: &Mutex<Vec<Seen>>,
    rule: &Mutex<Rule>,
) -> std::io::Result<()> {
    let (read, mut write) = conn.into_split();
    let mut read = AsyncBufReader::new(read);
    loop {
        let Some((head, request)) = read_head(&mut read).await? else {
            return Ok(());
        };
        let mut body = vec![0u8; content_length(&request.headers)];
        read.read_exact(&mut body).await?;
        let n = {
            let mut seen = seen.lock().unwrap();
            seen.push(request.clone());
            seen.len() - 1
        };
        let rule = Arc::clone(&rule.lock().unwrap());
        let fault = rule(&request, n);
        match fault {
            Fault::Status(code) => {
                let body = format!(
                    "<?xml version=\"1.0\" encoding=\"UTF-8\"?><Error><Code>{}</Code><Message>injected by the test proxy</Message></Error>",
                    if code == 503 { "SlowDown" } else { "InternalError" }
                );
                let answer = format!(
                    "HTTP/1.1 {code} Injected\r\nContent-Type: application/xml\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                write.write_all(answer.as_bytes()).await?;
                continue;
            }
            Fault::Delay(d) => tokio::time::sleep(d).await,
            Fault::Pass | Fault::CutAfter(_) => {}
        }
        // Forward with `Connection: close`, so the answer ends where the
        // upstream closes or its Content-Length says.
        let mut up = TcpStream::connect(upstream).await?;
        let head = rewrite_connection(&head);
        up.write_all(head.as_bytes()).await?;
        up.write_all(&body).await?;
        let mut up = AsyncBufReader::new(up);
        let Some((answer_head, answer)) = read_head(&mut up).await? else {
            return Ok(());
        };
        let has_body = request.method != "HEAD";
        let len = answer
            .headers
            .get("content-length")
            .and_then(|v| v.parse::<usize>().ok());
        let mut answer_body = Vec::new();
        if has_body {
            match len {
                Some(n) => {
                    answer_body.resize(n, 0);
                    up.read_exact(&mut answer_body).await?;
                }
                None => {
                    up.read_to_end(&mut answer_body).await?;
                }
            }
        }
        write.write_all(answer_head.as_bytes()).await?;
        if let Fault::CutAfter(n) = fault {
            write
                .write_all(&answer_body[..n.min(answer_body.len())])
                .await?;
            write.flush().await?;
            // Dropping both halves closes the connection mid-body.
            return Ok(());
        }
        write.write_all(&answer_body).await?;
        if has_body && len.is_none() {
            return Ok(());
        }
    }
}

/// Reads one message head (request or status line and headers); `None` at
/// a clean end of stream.
async fn read_head<R: tokio::io::AsyncBufRead + Unpin>(
    read: &mut R,
) -> std::io::Result<Option<(String, Seen)>> {
    let mut head = String::new();
    loop {
        let mut line = String::new();
        if read.read_line(&mut line).await? == 0 {
            return Ok(None);
        }
        let end = line == "\r\n";
        head.push_str(&line);
        if end {
            break;
        }
    }
    let mut lines = head.lines();
    let first = lines.next().unwrap_or_default();
    let mut parts = first.split(' ');
    let method = parts.next().unwrap_or_default().to_string();
    let target = parts.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Ok(Some((
        head,
        Seen {
            method,
            target,
            headers,
        },
    )))
}

fn content_length(headers: &HashMap<String, String>) -> usize {
    headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// `head` with its `Connection` header replaced by `Connection: close`.
fn rewrite_connection(head: &str) -> String {
    let mut out: Vec<&str> = head
        .split("\r\n")
        .filter(|l| !l.to_ascii_lowercase().starts_with("connection:"))
        .collect();
    // The head ends with "\r\n\r\n": two empty pieces at the end.
    out.truncate(out.len().saturating_sub(2));
    let mut s = out.join("\r\n");
    s.push_str("\r\nConnection: close\r\n\r\n");
    s
}

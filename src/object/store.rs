//! The object-storage client of one model: one `object_store` S3 client
//! for the model's bucket, the version (size, ETag) of each of its objects,
//! and the two ways the rest of the crate reads through it: whole ranges
//! for the format parsers ([`RemoteFile`]) and ranges streamed straight
//! into a caller's buffer for the read engine ([`Store::read_into`]).

use std::io::{Read, Seek, SeekFrom};
use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use futures::StreamExt;
use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};
use object_store::{
    BackoffConfig, ClientConfigKey, GetOptions, GetRange, ObjectStore, ObjectStoreExt, RetryConfig,
};
use tokio::sync::Semaphore;

use super::{config_error, ObjectUrl};
use crate::config::ObjectStoreConfig;
use crate::error::{Error, ObjectErrorKind, Result};
use crate::source::{Opener, Source};

/// The first ranged GET of a file's metadata reads this much (or the whole
/// object if smaller): the safetensors headers of published models and the
/// `.tmai` headers fit, so opening is one HEAD and one GET; a larger header
/// costs one more GET (`docs/object-storage.md`, "Requests").
pub(crate) const FIRST_GET: u64 = 1 << 20;

/// What the model was opened with: an object's size and ETag. Every later
/// read asks for exactly this version (`If-Match`) and checks the answer's
/// ETag, so a replaced object is [`Error::ObjectChanged`], never a mix.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct ObjectVersion {
    pub(crate) size: u64,
    pub(crate) etag: Option<String>,
}

/// The client for one bucket, shared by the parsers and the read engine.
pub(crate) struct Store {
    s3: AmazonS3,
    bucket: String,
    /// Bounds the requests in flight (`max_requests_in_flight`).
    requests: Semaphore,
}

impl Store {
    /// A client for the bucket of `url` (an object URL), configured from the
    /// `AWS_*` environment and then `config`.
    pub(crate) fn connect(url: &Arc<Path>, config: &ObjectStoreConfig) -> Result<Arc<Store>> {
        let ObjectUrl { bucket, .. } = ObjectUrl::parse(url)?;
        install_crypto_provider();
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(&bucket);
        if let Some(endpoint) = &config.endpoint {
            builder = builder.with_endpoint(endpoint);
        }
        for (key, value) in &config.options {
            let key: AmazonS3ConfigKey = key
                .parse()
                .map_err(|e| config_error(url, "configure the client", &one_line(&e)))?;
            builder = builder.with_config(key, value);
        }
        // An http:// endpoint the user named is the permission to use plain
        // HTTP. Set through the builder's own option, which edits the client
        // options in place (`with_client_options` would replace them all
        // and silently drop AWS_ALLOW_HTTP).
        let endpoint = builder.get_config_value(&AmazonS3ConfigKey::Endpoint);
        if endpoint.is_some_and(|e| e.starts_with("http://")) {
            builder = builder.with_allow_http(true);
        }
        let client = |key, value: std::time::Duration| {
            (
                AmazonS3ConfigKey::Client(key),
                format!("{}ms", value.as_millis().max(1)),
            )
        };
        for (key, value) in [
            client(ClientConfigKey::Timeout, config.request_timeout),
            client(ClientConfigKey::ConnectTimeout, config.connect_timeout),
        ] {
            builder = builder.with_config(key, value);
        }
        let s3 = builder
            .with_retry(RetryConfig {
                backoff: BackoffConfig {
                    init_backoff: config.retry_backoff,
                    max_backoff: config.max_backoff,
                    base: 2.0,
                },
                max_retries: config.max_retries,
                retry_timeout: config.retry_timeout,
            })
            .build()
            .map_err(|e| config_error(url, "configure the client", &one_line(&e)))?;
        Ok(Arc::new(Store {
            s3,
            bucket,
            requests: Semaphore::new(config.max_requests_in_flight.max(1)),
        }))
    }

    fn location(&self, url: &Arc<Path>) -> Result<object_store::path::Path> {
        let ObjectUrl { bucket, key } = ObjectUrl::parse(url)?;
        if bucket != self.bucket {
            return Err(config_error(
                url,
                "open",
                &format!(
                    "every file of a model must be in one bucket ({})",
                    self.bucket
                ),
            ));
        }
        Ok(object_store::path::Path::from(key))
    }

    /// The object's size and ETag (one HEAD).
    pub(crate) async fn head(&self, url: &Arc<Path>) -> Result<ObjectVersion> {
        let location = self.location(url)?;
        let _permit = self.permit(url).await?;
        let meta = self
            .s3
            .head(&location)
            .await
            .map_err(|e| object_error(url, "HEAD", e))?;
        Ok(ObjectVersion {
            size: meta.size,
            etag: meta.e_tag,
        })
    }

    /// Streams bytes `range` of the object, version `version`, into `dst`
    /// (exactly `range`'s length) as they arrive: no buffer of the whole
    /// range besides `dst`. `op` and `layer` are for errors. The client retries 5xx,
    /// throttling and failed connections, and resumes a body cut short from
    /// its last byte when the ETag is unchanged.
    pub(crate) async fn read_into(
        &self,
        url: &Arc<Path>,
        version: &ObjectVersion,
        range: Range<u64>,
        dst: &mut [u8],
        op: &str,
        layer: usize,
    ) -> Result<()> {
        debug_assert_eq!((range.end - range.start) as usize, dst.len());
        let op = || format!("{op} (bytes {}..{})", range.start, range.end);
        let location = self.location(url)?;
        let permit = self.permit(url).await?;
        let options = GetOptions {
            range: Some(GetRange::Bounded(range.clone())),
            if_match: version.etag.clone(),
            ..GetOptions::default()
        };
        let result = match self.s3.get_opts(&location, options).await {
            Ok(r) => r,
            Err(object_store::Error::Precondition { .. }) => {
                // The HEAD that names the new ETag takes a permit of its own.
                drop(permit);
                return Err(self.changed(url, version, layer).await);
            }
            Err(e) => return Err(object_error(url, &op(), e)),
        };
        // A server that ignores If-Match still names the version it sent.
        if version.etag.is_some() && result.meta.e_tag != version.etag {
            return Err(changed(url, version, layer, result.meta.e_tag));
        }
        let mut stream = result.into_stream();
        let mut at = 0usize;
        while let Some(piece) = stream.next().await {
            let piece = piece.map_err(|e| object_error(url, &op(), e))?;
            let Some(window) = dst.get_mut(at..at + piece.len()) else {
                return Err(protocol_error(
                    url,
                    &op(),
                    "the server sent more bytes than asked for",
                ));
            };
            window.copy_from_slice(&piece);
            at += piece.len();
        }
        if at != dst.len() {
            return Err(protocol_error(
                url,
                &op(),
                "the body ended before the range did",
            ));
        }
        Ok(())
    }

    /// Bytes `range` of the object as one buffer (for the parsers).
    async fn read(
        &self,
        url: &Arc<Path>,
        version: &ObjectVersion,
        range: Range<u64>,
    ) -> Result<Bytes> {
        let mut buf = vec![0u8; (range.end - range.start) as usize];
        self.read_into(url, version, range, &mut buf, "read the metadata", 0)
            .await?;
        Ok(Bytes::from(buf))
    }

    async fn permit(&self, url: &Arc<Path>) -> Result<tokio::sync::SemaphorePermit<'_>> {
        self.requests.acquire().await.map_err(|_| Error::Aborted {
            path: Arc::clone(url),
            layer: 0,
        })
    }

    /// The error for a refused `If-Match`: names the ETag the object has now
    /// if a HEAD can tell.
    async fn changed(&self, url: &Arc<Path>, version: &ObjectVersion, layer: usize) -> Error {
        let found = match self.head(url).await {
            Ok(now) => now.etag,
            Err(_) => None,
        };
        changed(url, version, layer, found)
    }
}

fn changed(url: &Arc<Path>, version: &ObjectVersion, layer: usize, found: Option<String>) -> Error {
    Error::ObjectChanged {
        path: Arc::clone(url),
        layer,
        expected: version.etag.clone().unwrap_or_else(|| "none".into()),
        found: found.unwrap_or_else(|| "unknown".into()),
    }
}

/// rustls needs a process-wide crypto provider when none is compiled in
/// (reqwest's `rustls-no-provider`): ring's. If the program installed one
/// already, that one stays.
fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

/// The client's error as a one-line [`Error::ObjectStore`] naming the URL.
fn object_error(url: &Arc<Path>, op: &str, e: object_store::Error) -> Error {
    use object_store::Error as E;
    let kind = match &e {
        E::NotFound { .. } => ObjectErrorKind::NotFound,
        E::PermissionDenied { .. } | E::Unauthenticated { .. } => ObjectErrorKind::AccessDenied,
        other => classify(other),
    };
    Error::ObjectStore {
        path: Arc::clone(url),
        op: op.into(),
        kind,
        message: one_line(&e),
    }
}

/// A generic client error by what its sources say: a connection that
/// could not be made, or a status. (`object_store`'s `RetryError`, which
/// holds the status, is private: the status is read from its message,
/// "Server returned non-2xx status code: 503 …".)
fn classify(e: &(dyn std::error::Error + 'static)) -> ObjectErrorKind {
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = source {
        if let Some(http) = err.downcast_ref::<object_store::client::HttpError>() {
            use object_store::client::HttpErrorKind as K;
            if matches!(http.kind(), K::Connect | K::Timeout) {
                return ObjectErrorKind::Unreachable;
            }
        }
        source = err.source();
    }
    let text = e.to_string();
    let server = [
        "status code: 5",
        "status code: 429",
        "SlowDown",
        "InternalError",
    ];
    if server.iter().any(|s| text.contains(s)) {
        ObjectErrorKind::Server
    } else {
        ObjectErrorKind::Other
    }
}

fn protocol_error(url: &Arc<Path>, op: &str, why: &str) -> Error {
    Error::ObjectStore {
        path: Arc::clone(url),
        op: op.into(),
        kind: ObjectErrorKind::Other,
        message: why.into(),
    }
}

/// An error's message and its sources' on one line.
fn one_line(e: &dyn std::error::Error) -> String {
    let text = e.to_string();
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// The objects of one model opened for the parsers: each with one HEAD,
/// then read through a [`RemoteFile`]; remembers each object's version for
/// the read engine.
pub(crate) struct RemoteFiles {
    store: Arc<Store>,
    runtime: tokio::runtime::Handle,
    /// Every object opened, in order, with the version it was read at.
    pub(crate) versions: Vec<(Arc<Path>, ObjectVersion)>,
}

impl RemoteFiles {
    /// `runtime` drives the client; the parsers block on it from a thread
    /// that is not one of its workers (a blocking-pool thread).
    pub(crate) fn new(store: Arc<Store>, runtime: tokio::runtime::Handle) -> Self {
        RemoteFiles {
            store,
            runtime,
            versions: Vec::new(),
        }
    }

    /// The version `path` was opened at.
    pub(crate) fn version_of(&self, path: &Path) -> Option<&ObjectVersion> {
        self.versions
            .iter()
            .find(|(p, _)| &**p == path)
            .map(|(_, v)| v)
    }
}

impl Opener for RemoteFiles {
    fn open(&mut self, path: &Arc<Path>) -> Result<(Box<dyn Source>, u64)> {
        let version = self.runtime.block_on(self.store.head(path))?;
        self.versions.push((Arc::clone(path), version.clone()));
        let size = version.size;
        let file = RemoteFile {
            store: Arc::clone(&self.store),
            runtime: self.runtime.clone(),
            path: Arc::clone(path),
            version,
            pos: 0,
            window_start: 0,
            window: Bytes::new(),
        };
        Ok((Box::new(file), size))
    }
}

/// An object read as a file by the parsers: `Read + Seek` over ranged GETs.
/// The first read fetches [`FIRST_GET`] bytes, which the parsers' small
/// reads and seeks back to the start then share; a read past what is held
/// fetches, in one more GET, what it asks for and at least four times as
/// much as was held.
struct RemoteFile {
    store: Arc<Store>,
    runtime: tokio::runtime::Handle,
    path: Arc<Path>,
    version: ObjectVersion,
    pos: u64,
    /// The bytes held: the object's bytes from `window_start`.
    window_start: u64,
    window: Bytes,
}

impl Read for RemoteFile {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let size = self.version.size;
        if buf.is_empty() || self.pos >= size {
            return Ok(0);
        }
        let held = self.window_start..self.window_start + self.window.len() as u64;
        if !held.contains(&self.pos) {
            // Four times what was held, at least: a parser that grows its
            // read (GGUF's metadata has no length up front; SmolLM2's is
            // 1.8 MB, and the parser reads past it) costs few GETs.
            let want = (buf.len() as u64)
                .max(FIRST_GET)
                .max(4 * self.window.len() as u64);
            let range = self.pos..size.min(self.pos.saturating_add(want));
            let bytes = self
                .runtime
                .block_on(self.store.read(&self.path, &self.version, range))
                .map_err(std::io::Error::other)?;
            self.window_start = self.pos;
            self.window = bytes;
        }
        let at = (self.pos - self.window_start) as usize;
        let n = buf.len().min(self.window.len() - at);
        buf[..n].copy_from_slice(&self.window[at..at + n]);
        self.pos += n as u64;
        Ok(n)
    }
}

impl Seek for RemoteFile {
    fn seek(&mut self, to: SeekFrom) -> std::io::Result<u64> {
        let pos = match to {
            SeekFrom::Start(p) => Some(p),
            SeekFrom::End(d) => self.version.size.checked_add_signed(d),
            SeekFrom::Current(d) => self.pos.checked_add_signed(d),
        };
        let pos = pos.ok_or_else(|| {
            std::io::Error::new(std::io::ErrorKind::InvalidInput, "seek before the start")
        })?;
        self.pos = pos;
        Ok(pos)
    }
}

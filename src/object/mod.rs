//! Models in object storage: `s3://bucket/key` URLs, the client that reads
//! them, and the files the format parsers read through it
//! (`docs/object-storage.md`).
//!
//! The client is the `object_store` crate, built only with the
//! `object-store` feature; without it an object URL is a one-line
//! [`Error::ObjectStore`] saying so, and nothing else changes.
//!
//! A model's path stays a `Path` everywhere (`s3://bucket/key` is a valid
//! one), so every error names the URL as it names a local file.

#[cfg(feature = "object-store")]
mod store;

use std::path::Path;
use std::sync::Arc;

use crate::error::{Error, ObjectErrorKind, Result};
use crate::source::Opener;

#[cfg(feature = "object-store")]
pub(crate) use store::{ObjectVersion, RemoteFiles, Store};

/// An object's bucket and key, parsed from `s3://bucket/key`.
#[derive(Debug, Clone, PartialEq, Eq)]
#[cfg_attr(not(feature = "object-store"), allow(dead_code))]
pub(crate) struct ObjectUrl {
    pub(crate) bucket: String,
    pub(crate) key: String,
}

#[cfg_attr(not(feature = "object-store"), allow(dead_code))]
impl ObjectUrl {
    /// Parses `s3://bucket/key`: a bucket and a non-empty key.
    pub(crate) fn parse(path: &Arc<Path>) -> Result<ObjectUrl> {
        let bad = |why: &str| config_error(path, "parse the URL", why);
        let text = path.to_str().ok_or_else(|| bad("it is not UTF-8"))?;
        let rest = text
            .strip_prefix("s3://")
            .ok_or_else(|| bad("only s3:// URLs are supported"))?;
        let (bucket, key) = rest
            .split_once('/')
            .ok_or_else(|| bad("expected s3://bucket/key"))?;
        if bucket.is_empty() || key.is_empty() || key.ends_with('/') {
            return Err(bad("expected s3://bucket/key, naming one object"));
        }
        Ok(ObjectUrl {
            bucket: bucket.into(),
            key: key.into(),
        })
    }
}

/// An [`Error::ObjectStore`] of kind `Config`.
pub(crate) fn config_error(path: &Arc<Path>, op: &str, why: &str) -> Error {
    Error::ObjectStore {
        path: Arc::clone(path),
        op: op.into(),
        kind: ObjectErrorKind::Config,
        message: why.into(),
    }
}

/// Runs the blocking `read` over `path` with the files of its kind: local
/// files, or objects read with a client from the `AWS_*` environment. Safe
/// to call from anywhere, inside an async runtime or not (objects are read
/// on a thread and runtime of their own), but it blocks the caller.
pub(crate) fn with_files<T: Send>(
    path: &Path,
    read: impl FnOnce(&Path, &mut dyn Opener) -> Result<T> + Send,
) -> Result<T> {
    if crate::source::is_object_url(path) {
        with_remote_files(path, read)
    } else {
        read(path, &mut crate::source::LocalFiles)
    }
}

/// Runs the blocking `read` (a format parser) over the object `path` with a
/// client from the `AWS_*` environment, on a runtime of its own: for the
/// blocking [`read_index`](crate::format::read_index), which may be called
/// from anywhere, inside an async runtime or not.
#[cfg(feature = "object-store")]
pub(crate) fn with_remote_files<T: Send>(
    path: &Path,
    read: impl FnOnce(&Path, &mut dyn Opener) -> Result<T> + Send,
) -> Result<T> {
    let shared: Arc<Path> = Arc::from(path);
    let config = crate::config::ObjectStoreConfig::default();
    std::thread::scope(|s| {
        s.spawn(|| {
            // One worker thread drives the client's connections while this
            // thread blocks on each request (`Handle::block_on` needs a
            // runtime driven by another thread).
            let runtime = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(1)
                .enable_all()
                .build()
                .map_err(|e| Error::io(&shared, "start a runtime for object storage", e))?;
            let store = Store::connect(&shared, &config)?;
            let mut files = RemoteFiles::new(store, runtime.handle().clone());
            read(path, &mut files)
        })
        .join()
        .unwrap_or_else(|_| {
            Err(Error::Aborted {
                path: Arc::clone(&shared),
                layer: 0,
            })
        })
    })
}

/// Without the `object-store` feature: the one-line error that says so.
#[cfg(not(feature = "object-store"))]
pub(crate) fn with_remote_files<T: Send>(
    path: &Path,
    _read: impl FnOnce(&Path, &mut dyn Opener) -> Result<T> + Send,
) -> Result<T> {
    Err(not_built(&Arc::from(path)))
}

/// The error for an object URL in a build without the `object-store` feature.
#[cfg(not(feature = "object-store"))]
pub(crate) fn not_built(path: &Arc<Path>) -> Error {
    config_error(
        path,
        "open",
        "this build of hyperion has no object-store support (enable the `object-store` feature)",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_into_bucket_and_key() {
        let p: Arc<Path> = Arc::from(Path::new("s3://models/llama/model.safetensors"));
        let u = ObjectUrl::parse(&p).unwrap();
        assert_eq!(
            (u.bucket.as_str(), u.key.as_str()),
            ("models", "llama/model.safetensors")
        );
        for bad in [
            "s3://models",
            "s3://models/",
            "s3:///key",
            "s3://b/dir/",
            "gs://b/k",
        ] {
            let p: Arc<Path> = Arc::from(Path::new(bad));
            assert!(
                matches!(
                    ObjectUrl::parse(&p),
                    Err(Error::ObjectStore {
                        kind: ObjectErrorKind::Config,
                        ..
                    })
                ),
                "{bad}"
            );
        }
    }
}

//! The OS page cache, for measurements: dropping a file's pages so the next
//! read is cold, and telling how much of a file is cached.

use std::fs::File;
use std::io;
use std::path::Path;

use crate::sys;
use crate::sys::pages::Residency;

/// Writes back and drops every cached page of the file at `path`
/// (`fsync` + `posix_fadvise(POSIX_FADV_DONTNEED)`), so that the next read
/// comes from the disk. Used by the demo and benchmarks to measure cold reads.
///
/// Pages mapped by a process stay cached; the kernel may also ignore the
/// advice. Check by timing when it matters.
pub fn drop_cached_pages(path: &Path) -> io::Result<()> {
    let file = File::open(path)?;
    file.sync_all()?;
    sys::pages::advise_dont_need(&file)
}

/// The fraction of the file at `path` that is in the page cache now, every
/// page counted (`mincore(2)`; nothing is read or faulted in). For
/// measurements that must know a read is warm. An empty file counts as
/// wholly cached.
pub fn cached_fraction(path: &Path) -> io::Result<f64> {
    let file = File::open(path)?;
    if file.metadata()?.len() == 0 {
        return Ok(1.0);
    }
    Residency::map(&file)?.fraction()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn residency_follows_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut f = File::create(&path).unwrap();
        f.write_all(&vec![7u8; 1 << 20]).unwrap();
        drop(f);
        drop_cached_pages(&path).unwrap();
        let file = File::open(&path).unwrap();
        let r = Residency::new(&file).unwrap();
        // tmpfs and some filesystems keep every page: only check "cold" where
        // dropping worked.
        let dropped = !r.cached(0, 4096);
        std::fs::read(&path).unwrap();
        assert!(r.cached(0, 1 << 20), "a file just read is cached");
        assert!(r.cached(4096, 8192));
        assert!(!r.cached(0, (1 << 20) + 1), "past the end is never cached");
        assert!(!r.cached(u64::MAX - 1, 2), "overflow is not cached");
        assert!(!r.cached(0, 0));
        assert_eq!(cached_fraction(&path).unwrap(), 1.0);
        if dropped {
            drop_cached_pages(&path).unwrap();
            assert!(!r.cached(0, 1 << 20));
            assert_eq!(cached_fraction(&path).unwrap(), 0.0);
        }
        // Truncating the file under the mapping is harmless.
        std::fs::File::create(&path).unwrap();
        assert!(!r.cached(0, 4096));
    }

    #[test]
    fn empty_files_have_no_residency() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("empty");
        File::create(&path).unwrap();
        assert!(Residency::new(&File::open(&path).unwrap()).is_none());
        assert_eq!(cached_fraction(&path).unwrap(), 1.0);
        assert!(cached_fraction(&dir.path().join("missing")).is_err());
    }
}

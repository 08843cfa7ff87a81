//! Helpers shared by the integration tests.
#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering::SeqCst};
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use hyperion::synth::SynthSpec;
use hyperion::{Backend, MappedModel, MmapConfig, ReadGate};
use tokio::sync::{Notify, Semaphore};

pub const KIB: u64 = 1024;

/// A synthetic model on disk, with the spec to regenerate its bytes.
pub struct TestModel {
    pub dir: tempfile::TempDir,
    pub path: PathBuf,
    pub spec: SynthSpec,
}

impl TestModel {
    pub fn new(layers: usize, layer_size: u64) -> TestModel {
        let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
        let path = dir.path().join("model.tmai");
        let spec = SynthSpec {
            layers,
            layer_size,
            ..SynthSpec::default()
        };
        hyperion::synth::write(&path, &spec).unwrap();
        // Out of the page cache, so that direct reads really are direct: a
        // direct-I/O engine copies chunks that are cached from the cache
        // (`direct_reads_copy_cached_chunks_from_the_page_cache`).
        hyperion::pagecache::drop_cached_pages(&path).unwrap();
        TestModel { dir, path, spec }
    }

    pub async fn open(&self, config: MmapConfig) -> MappedModel {
        MappedModel::open(&self.path, config).await.unwrap()
    }

    pub fn check(&self, layer: usize, bytes: &[u8]) {
        assert!(
            bytes == self.spec.layer_bytes(layer).as_slice(),
            "layer {layer}: bytes differ from the file"
        );
    }
}

pub fn config(backend: Backend, budget: u64) -> MmapConfig {
    MmapConfig {
        max_cache_size: budget,
        backend,
        ..MmapConfig::default()
    }
}

pub fn path_of(m: &TestModel) -> &Path {
    &m.path
}

/// How long a deterministic wait ([`Gate::wait_entered`], [`eventually`])
/// waits for its condition before it fails the test: generous, since the
/// machine may be busy; only a test that is failing waits this long.
pub const WAIT_LIMIT: Duration = Duration::from_secs(30);

/// A read gate the test controls: every read waits for a permit, and the
/// gate records how many reads were waiting or running at once.
#[derive(Clone)]
pub struct Gate {
    pub permits: Arc<Semaphore>,
    pub inside: Arc<AtomicUsize>,
    pub peak: Arc<AtomicUsize>,
    pub entered: Arc<AtomicUsize>,
    /// Reads that got their permit and went on to the engine.
    pub passed: Arc<AtomicUsize>,
    /// Notified each time a read reaches the gate.
    arrived: Arc<Notify>,
}

impl Gate {
    pub fn closed() -> Gate {
        Gate {
            permits: Arc::new(Semaphore::new(0)),
            inside: Arc::default(),
            peak: Arc::default(),
            entered: Arc::default(),
            passed: Arc::default(),
            arrived: Arc::default(),
        }
    }

    pub fn install(&self, model: &MappedModel) {
        let gate = self.clone();
        let hook: ReadGate = Arc::new(move |_layer| {
            let gate = gate.clone();
            async move {
                let now = gate.inside.fetch_add(1, SeqCst) + 1;
                gate.peak.fetch_max(now, SeqCst);
                gate.entered.fetch_add(1, SeqCst);
                gate.arrived.notify_waiters();
                gate.permits.acquire().await.unwrap().forget();
                gate.inside.fetch_sub(1, SeqCst);
                gate.passed.fetch_add(1, SeqCst);
            }
            .boxed()
        });
        model.set_read_gate(hook);
    }

    pub fn open(&self, reads: usize) {
        self.permits.add_permits(reads);
    }

    /// Waits until `n` reads have reached the gate in total: woken by each
    /// arrival, so it returns as soon as the `n`th read is there.
    pub async fn wait_entered(&self, n: usize) {
        let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
        loop {
            // Registered before looking, so no arrival is missed.
            let arrived = self.arrived.notified();
            tokio::pin!(arrived);
            arrived.as_mut().enable();
            if self.entered.load(SeqCst) >= n {
                return;
            }
            if tokio::time::timeout_at(deadline, arrived).await.is_err() {
                panic!(
                    "only {} of {n} reads reached the gate in {WAIT_LIMIT:?}",
                    self.entered.load(SeqCst)
                );
            }
        }
    }

    /// Waits until every read let through the gate so far has landed
    /// (counted in `model`'s `Stats::reads`; for tests whose reads do not
    /// fail): a point where no read the gate admitted is still running.
    pub async fn wait_passed_reads_landed(&self, model: &MappedModel) {
        eventually("every read let through the gate lands", || {
            model.stats().reads >= self.passed.load(SeqCst) as u64
        })
        .await;
    }
}

/// Waits until `cond` holds, and fails the test with `what` if it does not
/// within [`WAIT_LIMIT`]. For conditions nothing notifies (the model's
/// counters): it looks again every millisecond. That pause is the interval
/// between looks, not a synchronisation: the condition decides.
pub async fn eventually(what: &str, mut cond: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + WAIT_LIMIT;
    while !cond() {
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {WAIT_LIMIT:?} waiting until {what}");
        }
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
}

/// Whether the filesystem of `path` takes `O_DIRECT` (tmpfs does not; there
/// every read is buffered).
pub fn direct_io_works(path: &Path) -> bool {
    use std::os::unix::fs::OpenOptionsExt;
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_DIRECT)
        .open(path)
        .is_ok()
}

/// Closes `model` and waits until all its layer memory, live and idle in
/// the pool, is freed (buffers of reads still in flight go when they land).
pub async fn close_and_expect_freed(model: MappedModel) {
    let watcher = model.clone();
    model.close();
    eventually("memory returns to zero after close", || {
        let s = watcher.stats();
        s.memory_usage == 0 && s.pool_idle_bytes == 0
    })
    .await;
}

/// The engines every engine-parametrised test runs on, in one table:
/// `Auto`, the default, first, then each engine a model can be opened with
/// explicitly. [`ENGINES`], [`buffer_engines`], [`on_all_backends!`] and
/// [`on_buffer_backends!`] are all made from it, so no test file keeps a
/// list of its own. Each row: the name of the module of generated tests,
/// the `Backend` variant, and what the engine returns a layer in: a buffer
/// it fills (`buffers`: pooled, read in chunk requests, hashed while read)
/// or a view of a mapping of the file (`views`).
///
/// `with_engines!(m![args])` expands to `m!{ [args] row, row, … }`.
#[macro_export]
macro_rules! with_engines {
    ($then:ident ! $args:tt) => {
        $crate::$then! { $args
            auto Auto buffers,
            io_uring IoUring buffers,
            pread Pread buffers,
            mmap Mmap views,
        }
    };
}

/// [`with_engines!`]'s rows as the constants and the predicate below.
#[macro_export]
macro_rules! engine_consts {
    ([] $($module:ident $variant:ident $kind:ident,)*) => {
        /// Every engine, `Auto` (the default) first: what tests that loop
        /// over engines loop over.
        pub const ENGINES: &[hyperion::Backend] = &[$(hyperion::Backend::$variant),*];

        /// Whether `backend` returns layers in buffers it fills (every
        /// engine but mmap, whose layers are views of the file).
        pub fn fills_buffers(backend: hyperion::Backend) -> bool {
            match backend {
                $(hyperion::Backend::$variant => $crate::engine_kind_is_buffers!($kind),)*
                other => panic!("{other:?} is missing from with_engines!"),
            }
        }
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! engine_kind_is_buffers {
    (buffers) => {
        true
    };
    (views) => {
        false
    };
}

with_engines!(engine_consts![]);

/// The engines that read into buffers they fill: the ones with a buffer
/// pool, chunk requests (short reads, `read_chunk_size`), `O_DIRECT` and
/// checksums computed while reading. Every engine but mmap.
pub fn buffer_engines() -> impl Iterator<Item = Backend> {
    ENGINES.iter().copied().filter(|&b| fills_buffers(b))
}

/// Checks that `model`, opened with `asked`, reads with the engine it should:
/// the one asked for, or for `Auto` io_uring or its pread fallback (never
/// mmap, and never `Auto` itself). Which of the two `Auto` picks on this
/// machine is `loader.rs: auto_picks_io_uring_where_the_kernel_allows`.
pub fn assert_engine(model: &MappedModel, asked: Backend) {
    let got = model.backend();
    match asked {
        Backend::Auto => assert!(
            matches!(got, Backend::IoUring | Backend::Pread),
            "Auto must read with io_uring or pread, not {got:?}"
        ),
        _ => assert_eq!(got, asked),
    }
}

/// Generates `#[tokio::test]`s that run each named `async fn(Backend)` once
/// per engine of [`with_engines!`]: modules `auto`, `io_uring`, `pread` and
/// `mmap`.
#[macro_export]
macro_rules! on_all_backends {
    ($($name:ident),* $(,)?) => {
        $crate::with_engines!(engine_tests_all![$($name),*]);
    };
}

/// [`on_all_backends!`] for the engines that fill buffers
/// ([`fills_buffers`]): modules `auto`, `io_uring` and `pread`, for tests of
/// what only those engines have (the buffer pool, chunk requests).
#[macro_export]
macro_rules! on_buffer_backends {
    ($($name:ident),* $(,)?) => {
        $crate::with_engines!(engine_tests_buffers![$($name),*]);
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! engine_tests_all {
    ($names:tt $($module:ident $variant:ident $kind:ident,)*) => {
        $($crate::engine_test_module!($module $variant $names);)*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! engine_tests_buffers {
    ($names:tt $($module:ident $variant:ident $kind:ident,)*) => {
        $($crate::engine_test_module_if_buffers!($kind $module $variant $names);)*
    };
}

#[doc(hidden)]
#[macro_export]
macro_rules! engine_test_module_if_buffers {
    (buffers $($rest:tt)*) => {
        $crate::engine_test_module!($($rest)*);
    };
    (views $($rest:tt)*) => {};
}

#[doc(hidden)]
#[macro_export]
macro_rules! engine_test_module {
    ($module:ident $variant:ident [$($name:ident),*]) => {
        mod $module {
            $(
                #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
                async fn $name() {
                    super::$name(hyperion::Backend::$variant).await
                }
            )*
        }
    };
}

/// The name [`on_all_backends!`] had when there were two engines; kept so
/// that tests written against it still compile (and run on every engine).
#[macro_export]
macro_rules! on_both_backends {
    ($($t:tt)*) => {
        $crate::on_all_backends!($($t)*);
    };
}

/// Bytes this process has read through system calls so far (`rchar` in
/// /proc/self/io): how the "open reads metadata only" tests see reads.
pub fn bytes_read_by_this_process() -> u64 {
    let io = std::fs::read_to_string("/proc/self/io").unwrap();
    io.lines()
        .find_map(|l| l.strip_prefix("rchar: "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
}

/// The Python of `scripts/python-env.sh` (the reference libraries), or
/// `None` with a printed SKIPPED message when the package registry cannot be
/// reached, outside CI only: under CI (`CI=true`) the reference tests must
/// run, so any failure to create the environment fails the test. Any other
/// failure of the script is a test failure everywhere. The script runs once
/// per test binary; every test that asks gets the verdict (and the message).
pub fn python() -> Option<PathBuf> {
    static ENV: std::sync::OnceLock<PythonEnv> = std::sync::OnceLock::new();
    match ENV.get_or_init(create_python_env) {
        PythonEnv::Ready(python) => Some(python.clone()),
        PythonEnv::Offline(stderr) if !in_ci() => {
            eprintln!(
                "SKIPPED: scripts/python-env.sh could not reach the package registry to \
                 build the Python reference environment (set HYPERION_VENV to an existing \
                 one):\n{stderr}"
            );
            None
        }
        PythonEnv::Offline(stderr) => panic!(
            "scripts/python-env.sh could not reach the package registry, and under CI \
             (CI=true) the Python reference tests may not be skipped:\n{stderr}"
        ),
        PythonEnv::Failed(stderr) => panic!("scripts/python-env.sh failed:\n{stderr}"),
    }
}

/// Cuts (or extends) the file at `path` to `len` bytes, as another
/// process truncating a model under an open model would.
pub fn truncate(path: &Path, len: u64) {
    std::fs::OpenOptions::new()
        .write(true)
        .open(path)
        .unwrap()
        .set_len(len)
        .unwrap();
}

/// The repository's root (the workspace's: these helpers are shared by the
/// tests of every crate in it).
pub fn repo_root() -> &'static Path {
    let mut dir = Path::new(env!("CARGO_MANIFEST_DIR"));
    while !dir.join("Cargo.lock").exists() {
        dir = dir.parent().expect("a Cargo.lock above the crate");
    }
    dir
}

/// Whether the tests run under CI (`CI=true`, as CI services set it and
/// `.ci/run` is run), where a test may never skip: what it needs must be
/// there.
pub fn in_ci() -> bool {
    std::env::var("CI").is_ok_and(|v| v == "true")
}

/// What `scripts/python-env.sh` came to: the venv's python, or its stderr.
enum PythonEnv {
    Ready(PathBuf),
    /// The package registry could not be reached.
    Offline(String),
    Failed(String),
}

fn create_python_env() -> PythonEnv {
    let root = repo_root();
    let out = std::process::Command::new("bash")
        .arg(root.join("scripts/python-env.sh"))
        .output()
        .expect("run bash");
    if out.status.success() {
        let py = String::from_utf8(out.stdout).unwrap();
        return PythonEnv::Ready(PathBuf::from(py.trim()));
    }
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    const OFFLINE: &[&str] = &[
        "NewConnectionError",
        "Failed to establish a new connection",
        "Temporary failure in name resolution",
        "Name or service not known",
        "Network is unreachable",
        "Connection refused",
        "ConnectTimeout",
        "Connection timed out",
        "Read timed out",
        "Could not fetch URL",
        "No matching distribution found",
        "ProxyError",
    ];
    if OFFLINE.iter().any(|s| stderr.contains(s)) {
        PythonEnv::Offline(stderr)
    } else {
        PythonEnv::Failed(stderr)
    }
}

/// A tensor to write: name, safetensors dtype name, shape, bytes.
pub struct St<'a> {
    pub name: &'a str,
    pub dtype: &'a str,
    pub shape: &'a [u64],
    pub data: Vec<u8>,
}

/// Writes a safetensors file holding `tensors` back to back in the given
/// order, its header padded to 8 bytes (so the data section starts 8-aligned).
pub fn write_safetensors(dir: &Path, tensors: &[St<'_>]) -> PathBuf {
    let mut entries = Vec::new();
    let mut data = Vec::new();
    for t in tensors {
        let start = data.len();
        data.extend_from_slice(&t.data);
        entries.push(format!(
            "{:?}:{{\"dtype\":{:?},\"shape\":{:?},\"data_offsets\":[{start},{}]}}",
            t.name,
            t.dtype,
            t.shape,
            data.len()
        ));
    }
    let mut header = format!("{{{}}}", entries.join(",")).into_bytes();
    header.resize(header.len().next_multiple_of(8), b' ');
    let mut file = (header.len() as u64).to_le_bytes().to_vec();
    file.extend_from_slice(&header);
    file.extend_from_slice(&data);
    let path = dir.join("model.safetensors");
    std::fs::write(&path, file).unwrap();
    path
}

/// The directory of the Python package `module` in the reference
/// environment (found without importing it, so packages installed without
/// their dependencies work), or `None` where [`python`] skips.
pub fn python_package(module: &str) -> Option<PathBuf> {
    let py = python()?;
    let out = std::process::Command::new(&py)
        .arg("-c")
        .arg(format!(
            "import importlib.util as u; print(u.find_spec({module:?}).submodule_search_locations[0])"
        ))
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "no Python package {module}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    Some(PathBuf::from(String::from_utf8(out.stdout).unwrap().trim()))
}

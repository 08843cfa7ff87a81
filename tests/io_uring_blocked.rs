//! With io_uring blocked by seccomp (as container runtimes often do),
//! `Backend::Auto` falls back to the pread engine (not mmap, which could
//! SIGBUS on a truncated file), says so once, and still reads every byte, in
//! one chunk per layer or in several; `Backend::IoUring` is a typed error.
//!
//! This file holds a single test on purpose: the seccomp filter is installed
//! on the test's thread and inherited by every thread it starts, and each
//! test file is its own process, so no other test is affected.

mod common;

use std::sync::{Arc, Mutex};

use common::{config, TestModel, KIB};
use hyperion::{Backend, Error, MappedModel, MmapConfig};
use tracing_subscriber::layer::{Context, SubscriberExt};
use tracing_subscriber::Layer;

/// Makes `io_uring_setup` fail with ENOSYS for this thread and its children.
fn block_io_uring() {
    let filter = [
        // Load the syscall number (offset 0 of struct seccomp_data).
        libc::sock_filter {
            code: (libc::BPF_LD | libc::BPF_W | libc::BPF_ABS) as u16,
            jt: 0,
            jf: 0,
            k: 0,
        },
        libc::sock_filter {
            code: (libc::BPF_JMP | libc::BPF_JEQ | libc::BPF_K) as u16,
            jt: 0,
            jf: 1,
            k: libc::SYS_io_uring_setup as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ERRNO | libc::ENOSYS as u32,
        },
        libc::sock_filter {
            code: (libc::BPF_RET | libc::BPF_K) as u16,
            jt: 0,
            jf: 0,
            k: libc::SECCOMP_RET_ALLOW,
        },
    ];
    let prog = libc::sock_fprog {
        len: filter.len() as u16,
        filter: filter.as_ptr() as *mut libc::sock_filter,
    };
    // SAFETY: plain prctl calls; `prog` points at a valid filter that lives
    // across the call (the kernel copies it).
    unsafe {
        assert_eq!(libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), 0);
        assert_eq!(
            libc::prctl(
                libc::PR_SET_SECCOMP,
                libc::SECCOMP_MODE_FILTER,
                &prog as *const libc::sock_fprog
            ),
            0,
            "installing the seccomp filter: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[derive(Clone, Default)]
struct Warnings(Arc<Mutex<Vec<String>>>);

impl<S: tracing::Subscriber> Layer<S> for Warnings {
    fn on_event(&self, event: &tracing::Event<'_>, _ctx: Context<'_, S>) {
        if *event.metadata().level() == tracing::Level::WARN {
            self.0
                .lock()
                .unwrap()
                .push(event.metadata().name().to_string());
        }
    }
}

#[test]
fn auto_falls_back_to_pread_when_io_uring_is_blocked() {
    let m = TestModel::new(4, 96 * KIB);
    block_io_uring();
    let warnings = Warnings::default();
    let _guard =
        tracing::subscriber::set_default(tracing_subscriber::registry().with(warnings.clone()));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let err = MappedModel::open(&m.path, config(Backend::IoUring, 1 << 20))
            .await
            .unwrap_err();
        assert!(
            matches!(
                err,
                Error::BackendUnavailable {
                    backend: "io_uring",
                    ..
                }
            ),
            "{err}"
        );
        assert!(err.to_string().contains("cannot create a ring"), "{err}");

        for _ in 0..2 {
            let model = m.open(config(Backend::Auto, 1 << 20)).await;
            assert_eq!(model.backend(), Backend::Pread);
            for i in 0..4 {
                m.check(i, &model.layer(i).await.unwrap());
            }
            // Several chunks per layer, read by several threads.
            let model = m
                .open(MmapConfig {
                    read_chunk_size: 16 * KIB,
                    reads_in_flight: 3,
                    ..config(Backend::Auto, 1 << 20)
                })
                .await;
            assert_eq!(model.backend(), Backend::Pread);
            for i in (0..4).rev() {
                m.check(i, &model.layer(i).await.unwrap());
            }
        }
    });
    // The runtime's worker threads do not carry the thread-local subscriber,
    // but `open` runs the fallback on this thread: one warning, not two.
    assert_eq!(
        warnings.0.lock().unwrap().len(),
        1,
        "{:?}",
        warnings.0.lock().unwrap()
    );
}

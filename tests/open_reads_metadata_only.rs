//! Opening a model reads its header, not its layers. One test in this file:
//! it measures the whole process's read bytes (`rchar` in /proc/self/io).

mod common;

use common::{bytes_read_by_this_process, config, TestModel};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn open_reads_only_the_header() {
    let m = TestModel::new(64, 1 << 20);
    for &backend in common::ENGINES {
        let before = bytes_read_by_this_process();
        let model = m.open(config(backend, 8 << 20)).await;
        let read = bytes_read_by_this_process() - before;
        assert!(
            read < 256 << 10,
            "{backend:?}: opening a 64 MiB model read {read} bytes"
        );
        let s = model.stats();
        assert_eq!((s.reads, s.bytes_read, s.memory_usage), (0, 0, 0));
        assert_eq!(model.layer_count(), 64);
    }
}

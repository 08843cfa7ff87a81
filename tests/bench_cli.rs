//! `hyperion bench --quick --json` on a 64 MiB model: the JSON report has
//! every figure and ratio, all positive, and the temp files are gone.

use std::process::Command;

#[test]
fn bench_quick_json_reports_every_figure() {
    // Under the target dir, so on a disk filesystem (O_DIRECT may be refused on tmpfs).
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_hyperion"))
        .args(["bench", "--quick", "--json", "--size", "67108864", "--dir"])
        .arg(dir.path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();

    assert_eq!(v["model"]["model_bytes"], 64 << 20);
    assert_eq!(v["repetitions"], 2);
    for name in [
        "ceiling_direct",
        "ceiling_buffered",
        "memcpy",
        "stream_cold_io_uring",
        "stream_cold_io_uring_buffered",
        "stream_cold_mmap",
        "stream_warm",
        "random_cold",
        "concurrent_1",
        "concurrent_4",
        "concurrent_16",
        "concurrent_64",
        "prefetch_ahead",
    ] {
        let m = &v["measurements"][name];
        let (min, median, max) = (
            m["min_mb_s"].as_f64().unwrap_or(0.0),
            m["median_mb_s"].as_f64().unwrap_or(0.0),
            m["max_mb_s"].as_f64().unwrap_or(0.0),
        );
        assert!(0.0 < min && min <= median && median <= max, "{name}: {m}");
        assert_eq!(m["runs_mb_s"].as_array().map(Vec::len), Some(2), "{name}");
    }
    for tasks in [
        "concurrent_1",
        "concurrent_4",
        "concurrent_16",
        "concurrent_64",
    ] {
        let reads = v["measurements"][tasks]["disk_reads"].as_array().unwrap();
        assert!(reads.iter().all(|r| r.as_u64().unwrap() > 0), "{tasks}");
    }
    for ratio in ["cold_stream_over_ceiling", "warm_over_memcpy"] {
        let r = v["ratios"][ratio].as_f64().unwrap_or(0.0);
        assert!(r > 0.0 && r.is_finite(), "{ratio}: {r}");
    }
    // Only the (now empty) directory we made is left: the bench removed its files.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

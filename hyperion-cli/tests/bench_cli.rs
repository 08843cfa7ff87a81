//! `hyperion bench --quick --json` on a 64 MiB model: the JSON report has
//! every figure and ratio, all positive, and the temp files are gone.
//! `hyperion load`: whole and streaming loads of `.tmai` and safetensors
//! files report the same checksum, peak RSS and budget, and bad input is a
//! one-line error.

#[path = "../../tests/common/mod.rs"]
mod common;

use std::collections::HashMap;
use std::path::Path;
use std::process::{Command, Output};

fn hyperion(args: &[&str], file: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_hyperion"))
        .args(args)
        .arg(file)
        .output()
        .unwrap()
}

fn succeed_json(args: &[&str], file: &Path) -> serde_json::Value {
    let out = hyperion(args, file);
    assert!(
        out.status.success(),
        "hyperion {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// The checksum `hyperion load` computes: little-endian u64 words, tail bytes one by one.
fn touch(bytes: &[u8]) -> u64 {
    let words = bytes.chunks_exact(8);
    let tail: u64 = words.remainder().iter().map(|&b| u64::from(b)).sum();
    words
        .map(|w| u64::from_le_bytes(w.try_into().unwrap()))
        .fold(tail, u64::wrapping_add)
}

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
        "stream_cold_io_uring_noverify",
        "stream_cold_deep",
        "stream_cold_io_uring_fresh",
        "stream_cold_fresh_pooled",
        "stream_cold_io_uring_buffered",
        "stream_cold_pread",
        "stream_cold_mmap",
        "stream_warm",
        "stream_warm_default",
        "stream_warm_io_uring",
        "random_cold",
        "concurrent_1",
        "concurrent_4",
        "concurrent_16",
        "concurrent_64",
        "prefetch_ahead",
        "stream_8x_budget",
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
    // The pooled models took over the buffers the ones before them left.
    let reuses = v["measurements"]["stream_cold_fresh_pooled"]["pool_reuses"].as_u64();
    assert!(reuses.is_some_and(|r| r > 0), "{reuses:?}");
    for tasks in [
        "concurrent_1",
        "concurrent_4",
        "concurrent_16",
        "concurrent_64",
    ] {
        let reads = v["measurements"][tasks]["disk_reads"].as_array().unwrap();
        assert!(reads.iter().all(|r| r.as_u64().unwrap() > 0), "{tasks}");
    }
    for ratio in [
        "cold_stream_over_ceiling",
        "cold_stream_noverify_over_ceiling",
        "cold_stream_fresh_over_ceiling",
        "cold_stream_fresh_pooled_over_ceiling",
        "cold_stream_deep_over_ceiling",
        "first_pass_default_lookahead_over_ceiling",
        "warm_over_memcpy",
        "warm_default_config_over_memcpy",
    ] {
        let r = v["ratios"][ratio].as_f64().unwrap_or(0.0);
        assert!(r > 0.0 && r.is_finite(), "{ratio}: {r}");
    }
    // The headline ratios round by round: one per repetition.
    for ratio in ["cold_stream_over_ceiling", "warm_over_memcpy"] {
        let rounds = v["ratios"]["per_round"][ratio].as_array().unwrap();
        assert_eq!(rounds.len(), 2, "{ratio}");
        assert!(rounds.iter().all(|r| r.as_f64().unwrap() > 0.0), "{ratio}");
    }
    // The deep row reads ahead as far as the budget (16 MiB of 4 MiB
    // layers) holds beside the layer in use; the others prefetch_threads.
    assert_eq!(v["measurements"]["stream_cold_deep"]["lookahead"], 3);
    assert_eq!(v["measurements"]["stream_cold_io_uring"]["lookahead"], 2);
    // Peak RSS streaming a model 8× the budget, with the check's result.
    let rss = &v["rss"]["stream_8x_budget"];
    let budget = rss["budget"].as_u64().unwrap();
    assert_eq!(budget, 8 << 20, "{rss}");
    assert_eq!(rss["model_over_budget"].as_f64(), Some(8.0));
    let peaks = rss["peak_rss_bytes"].as_array().unwrap();
    assert_eq!(peaks.len(), 2);
    assert!(peaks.iter().all(|p| p.as_u64().unwrap() > 0));
    assert_eq!(rss["limit_bytes"].as_u64(), Some(budget + (32 << 20)));
    let worst = rss["worst_peak_rss_bytes"].as_u64().unwrap();
    assert_eq!(rss["met"].as_bool(), Some(worst <= budget + (32 << 20)));
    // Only the (now empty) directory we made is left: the bench removed its files.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}

#[test]
fn load_whole_and_streaming_report_the_same_bytes() {
    let m = common::TestModel::new(8, 1 << 20);
    let (path, spec) = (m.path.clone(), &m.spec);
    let expected = (0..spec.layers).fold(0u64, |s, i| s.wrapping_add(touch(&spec.layer_bytes(i))));

    let whole = succeed_json(&["load", "--json", "--cold"], &path);
    assert_eq!(whole["mode"], "whole");
    assert_eq!(whole["layers"], 8);
    assert_eq!(whole["bytes"], 8 << 20);
    assert_eq!(whole["checksum"], format!("{expected:016x}"));
    assert!(whole["budget"].as_u64().unwrap() >= 8 << 20);
    assert!(whole["mb_s"].as_f64().unwrap() > 0.0);
    // The whole model was held at once.
    assert_eq!(whole["peak_memory"], 8 << 20);
    let peak = whole["peak_rss_bytes"].as_u64().unwrap();
    assert!(peak >= 8 << 20 && peak >= whole["rss_before_bytes"].as_u64().unwrap());
    // Cold: nothing came from the page cache. Then, with the file cached
    // (read once), the default config copies it from there, where the
    // filesystem allows O_DIRECT at all (not tmpfs).
    assert_eq!(whole["page_cache_bytes"], 0);
    std::fs::read(&path).unwrap();
    let cached = succeed_json(&["load", "--json"], &path);
    let direct = common::direct_io_works(&path);
    let from_cache = cached["page_cache_bytes"].as_u64().unwrap();
    if direct {
        assert!(from_cache >= 8 << 20, "{cached}");
    }

    for extra in [&["--buffered"][..], &["--backend", "mmap"], &[]] {
        let args = [&["load", "--json", "--budget", "2097152"][..], extra].concat();
        let s = succeed_json(&args, &path);
        assert_eq!(s["mode"], "stream", "{args:?}");
        assert_eq!(s["checksum"], whole["checksum"], "{args:?}");
        assert!(
            s["peak_memory"].as_u64().unwrap() <= 2 << 20,
            "{args:?}: {s}"
        );
    }

    // Cold layers read through the page cache: always, or only while fresh
    // memory is slow (either way here); the same bytes.
    for share in ["--share-cold", "--share-cold=always", "--share-cold=auto"] {
        let args = ["load", "--json", "--cold", "--share-page-cache", share];
        let s = succeed_json(&args, &path);
        assert_eq!(s["checksum"], whole["checksum"], "{args:?}");
    }
    let out = hyperion(
        &["load", "--share-page-cache", "--share-cold=sometimes"],
        &path,
    );
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success() && err.contains("sometimes"), "{err}");

    // The text form says the same in one line.
    let out = hyperion(&["load"], &path);
    assert!(out.status.success());
    let text = String::from_utf8(out.stdout).unwrap();
    assert!(
        text.contains("whole") && text.contains(&format!("{expected:016x}")),
        "{text}"
    );
}

#[test]
fn load_reads_safetensors_tensor_by_tensor() {
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let path = dir.path().join("m.safetensors");
    let names = [
        "model.embed_tokens.weight",
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.input_layernorm.weight",
        "model.layers.1.mlp.up_proj.weight",
        "lm_head.weight",
    ];
    // Odd sizes, so that tails shorter than a word are summed too.
    let data: Vec<Vec<u8>> = (0..names.len())
        .map(|i| {
            (0..(4096 * (i + 1) + 6))
                .map(|b| (b * 31 + i) as u8)
                .collect()
        })
        .collect();
    let views: HashMap<String, safetensors::tensor::TensorView<'_>> = names
        .iter()
        .zip(&data)
        .map(|(n, d)| {
            let view =
                safetensors::tensor::TensorView::new(safetensors::Dtype::F16, vec![d.len() / 2], d)
                    .unwrap();
            (n.to_string(), view)
        })
        .collect();
    safetensors::serialize_to_file(views, None, &path).unwrap();
    let expected = data.iter().fold(0u64, |s, d| s.wrapping_add(touch(d)));

    let v = succeed_json(&["load", "--json", "--cold"], &path);
    assert_eq!(v["tensors"], 5);
    assert_eq!(v["bytes"], data.iter().map(Vec::len).sum::<usize>());
    assert_eq!(v["checksum"], format!("{expected:016x}"));
}

#[test]
fn load_refuses_bad_input_with_one_line() {
    let m = common::TestModel::new(2, 1 << 20);
    let (dir, path) = (&m.dir, m.path.clone());
    let garbage = dir.path().join("garbage.safetensors");
    std::fs::write(&garbage, b"not a model at all").unwrap();
    for (args, file, says) in [
        (
            &["load"][..],
            dir.path().join("missing.tmai"),
            "cannot read",
        ),
        (&["load", "--budget", "0"], path.clone(), "--budget 0"),
        (&["load", "--budget", "4096"], path.clone(), "budget"),
        (&["load"], garbage, "garbage.safetensors"),
    ] {
        let out = hyperion(args, &file);
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{args:?} {file:?} succeeded");
        assert!(err.starts_with("hyperion: load: "), "{err}");
        assert!(err.contains(says), "{args:?}: {err}");
        assert!(!err.contains("panicked"), "{err}");
        assert_eq!(err.trim_end().lines().count(), 1, "{err}");
    }
}

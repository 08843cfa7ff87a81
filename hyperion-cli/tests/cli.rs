//! The `hyperion` command line: synth, inspect, and clean failures.

use std::path::Path;
use std::process::{Command, Output};

fn hyperion() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hyperion"))
}

/// Runs `cmd`, asserting that it succeeds (showing its stderr if not).
fn succeed(cmd: &mut Command) -> Output {
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "{cmd:?} failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    out
}

#[test]
fn synth_then_inspect_json_describes_the_model() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tmai");
    let synth = |to: &Path| {
        let mut cmd = hyperion();
        cmd.args([
            "synth",
            "--layers",
            "3",
            "--layer-size",
            "8192",
            "--precision",
            "16",
        ])
        .arg(to);
        cmd
    };
    succeed(&mut synth(&path));

    let out = succeed(hyperion().args(["inspect", "--json"]).arg(&path));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["format"], "tmai");
    assert_eq!(v["layer_count"], 3);
    assert_eq!(v["total_bytes"], 3 * 8192);
    let layer = &v["layers"][2];
    assert_eq!(layer["size"], 8192);
    assert_eq!(layer["precision"], 16);
    assert_eq!(layer["offset"].as_u64().unwrap() % 4096, 0);
    assert_eq!(layer["tensors"][0]["name"], "layers.2.weight");
    assert_eq!(layer["tensors"][0]["dtype"], "F16");
    assert_eq!(layer["tensors"][0]["shape"], serde_json::json!([16, 256]));

    // The same model regenerated from the same seed is byte-identical.
    let again = dir.path().join("again.tmai");
    let status = synth(&again).status().unwrap();
    assert!(status.success());
    assert_eq!(
        std::fs::read(&path).unwrap(),
        std::fs::read(&again).unwrap()
    );

    let out = hyperion().arg("inspect").arg(&path).output().unwrap();
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(
        table.contains("3 layers") && table.contains("layers.1.weight F16 [16, 256]"),
        "{table}"
    );
}

#[test]
fn a_bad_file_is_one_line_on_stderr_and_exit_status_1() {
    let dir = tempfile::tempdir().unwrap();
    for (name, bytes) in [
        ("junk.tmai", &b"not a model at all"[..]),
        ("empty.tmai", &b""[..]),
        ("truncated.tmai", &b"TMAI\x00\r\n\x1a\x01\x00"[..]),
    ] {
        let path = dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        let out = hyperion().arg("inspect").arg(&path).output().unwrap();
        assert_eq!(out.status.code(), Some(1), "{name}");
        let err = String::from_utf8(out.stderr).unwrap();
        assert_eq!(err.lines().count(), 1, "{name}: {err}");
        assert!(
            err.starts_with("hyperion: ") && err.contains(name),
            "{name}: {err}"
        );
    }
    let out = hyperion()
        .args(["inspect", "/nonexistent/model.tmai"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
}

#[test]
fn synth_rejects_impossible_specs() {
    let dir = tempfile::tempdir().unwrap();
    let out = hyperion()
        .args([
            "synth",
            "--layers",
            "2",
            "--layer-size",
            "10",
            "--precision",
            "32",
        ])
        .arg(dir.path().join("x.tmai"))
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("layer size 10"));
}

#[test]
fn the_demo_runs_verifies_and_stays_within_its_budget() {
    let dir = tempfile::tempdir().unwrap();
    let out = hyperion()
        .args([
            "demo",
            "--layers",
            "12",
            "--layer-size",
            "1048576",
            "--budget",
            "4194304",
            "--dir",
        ])
        .arg(dir.path())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let summary = stdout
        .lines()
        .find(|l| l.starts_with("summary:"))
        .expect("a summary line");
    assert!(
        summary.contains("layers=12") && summary.contains("verified=ok"),
        "{summary}"
    );
    let peak: u64 = summary
        .split_whitespace()
        .find_map(|kv| kv.strip_prefix("peak_memory="))
        .unwrap()
        .parse()
        .unwrap();
    assert!(peak <= 4 << 20, "{summary}");
}

#[test]
fn verify_tensor_and_convert_read_through_the_loader() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("m.tmai");
    let spec = hyperion::synth::SynthSpec {
        layers: 4,
        layer_size: 4 * 300,
        ..Default::default()
    };
    hyperion::synth::write(&path, &spec).unwrap();

    let out = succeed(hyperion().arg("verify").arg(&path));
    assert!(String::from_utf8_lossy(&out.stdout).contains("ok — 4 layers"));

    let out = succeed(hyperion().arg("tensor").arg(&path).arg("layers.3.tail"));
    assert_eq!(out.stdout, spec.layer_bytes(3)[256 * 4..]);
    let out = hyperion()
        .arg("tensor")
        .arg(&path)
        .arg("missing")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));

    // A .tmai converts to an identical file.
    let copy = dir.path().join("copy.tmai");
    succeed(hyperion().arg("convert").arg(&path).arg(&copy));
    assert_eq!(std::fs::read(&path).unwrap(), std::fs::read(&copy).unwrap());

    // A flipped byte in a layer fails verification, naming the layer.
    let offset = hyperion::format::read_index(&path).unwrap().layers[2].offset() + 7;
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[offset as usize] ^= 0x40;
    std::fs::write(&path, bytes).unwrap();
    let out = hyperion().arg("verify").arg(&path).output().unwrap();
    assert_eq!(out.status.code(), Some(1));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("layer 2") && err.contains("checksum mismatch"),
        "{err}"
    );
}

/// Every tensor of `a` and `b`, by name: dtype, shape and bytes, read
/// through the loader.
fn tensors_of(path: &std::path::Path) -> Vec<(String, String, Vec<u64>, Vec<u8>)> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let model = hyperion::MappedModel::open(path, hyperion::MmapConfig::default())
            .await
            .unwrap();
        let mut all = Vec::new();
        for i in 0..model.layer_count() {
            let w = model.layer(i).await.unwrap();
            for t in w.tensors() {
                all.push((
                    t.name().to_string(),
                    t.dtype().to_string(),
                    t.shape().to_vec(),
                    t.bytes().to_vec(),
                ));
            }
        }
        all.sort();
        all
    })
}

#[test]
fn convert_keeps_every_tensor_of_safetensors_and_gguf_files() {
    let dir = tempfile::tempdir().unwrap();
    // A GGUF file written by gguf-py (committed as a fuzz seed), and a
    // safetensors file written by the safetensors crate.
    let gguf =
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../fuzz/corpus/gguf/ok-small.gguf");
    let st = dir.path().join("model.safetensors");
    let data: Vec<Vec<u8>> = (0..5u8)
        .map(|i| (0..(64 * (i as usize + 1))).map(|b| b as u8 ^ i).collect())
        .collect();
    let views: Vec<(String, safetensors::tensor::TensorView)> = data
        .iter()
        .enumerate()
        .map(|(i, d)| {
            let name = if i == 4 {
                "lm_head.weight".to_string()
            } else {
                format!("model.layers.{}.w{i}", i / 2)
            };
            (
                name,
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![d.len() / 4], d)
                    .unwrap(),
            )
        })
        .collect();
    safetensors::serialize_to_file(views, None, &st).unwrap();

    for source in [gguf, st] {
        let out = dir.path().join("converted.tmai");
        succeed(hyperion().arg("convert").arg(&source).arg(&out));
        let (a, b) = (tensors_of(&source), tensors_of(&out));
        assert!(!a.is_empty());
        assert_eq!(a, b, "{}: converted tensors differ", source.display());
        assert_eq!(
            hyperion::format::read_index(&source).unwrap().layers.len(),
            hyperion::format::read_index(&out).unwrap().layers.len()
        );
    }
}

#[test]
fn the_demo_accepts_every_backend_name() {
    let dir = tempfile::tempdir().unwrap();
    for (arg, name) in [
        ("auto", "io_uring"),
        ("io-uring", "io_uring"),
        ("pread", "pread"),
        ("mmap", "mmap"),
    ] {
        let out = succeed(
            hyperion()
                .args(["demo", "--layers", "4", "--layer-size", "262144"])
                .args(["--budget", "1048576", "--passes", "1", "--backend", arg])
                .arg("--dir")
                .arg(dir.path()),
        );
        let stdout = String::from_utf8_lossy(&out.stdout);
        let summary = stdout
            .lines()
            .find(|l| l.starts_with("summary:"))
            .expect("a summary line");
        assert!(
            summary.contains(&format!("backend={name} ")) && summary.contains("verified=ok"),
            "--backend {arg}: {summary}"
        );
    }
}

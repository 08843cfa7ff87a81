//! `hyperion simulate`: the policy simulator from the command line.

use std::process::Command;

use hyperion::policy::{belady, simulate, traces, PolicyKind};

// --- The command line ----------------------------------------------------------

fn hyperion() -> Command {
    Command::new(env!("CARGO_BIN_EXE_hyperion"))
}

fn simulate_json(args: &[&str]) -> serde_json::Value {
    let out = hyperion()
        .arg("simulate")
        .args(args)
        .arg("--json")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("one JSON object")
}

#[test]
fn cli_simulate_json_reports_every_policy_next_to_belady() {
    let v = simulate_json(&["--trace", "cyclic", "--layers", "64", "--capacity", "16"]);
    assert_eq!(v["trace"], "cyclic");
    assert_eq!(v["layers"], 64);
    assert_eq!(v["capacity"], 16);
    assert_eq!(v["accesses"], 64 * 20);
    let results = &v["results"];
    assert_eq!(results["lru"]["hits"], 0);
    let best = results["belady"]["hit_rate"].as_f64().unwrap();
    let adaptive = results["adaptive"]["hit_rate"].as_f64().unwrap();
    assert!(adaptive >= 0.9 * best, "{adaptive} vs {best}");
    assert!(results["adaptive"]["of_belady"].as_f64().unwrap() >= 0.9);
    assert_eq!(results["belady"]["of_belady"], 1.0);
    // The same numbers as the library.
    let trace = traces::cyclic(64, 20);
    assert_eq!(
        results["adaptive"]["hits"],
        simulate(PolicyKind::Adaptive, &trace, 64, 16).hits
    );
    assert_eq!(results["belady"]["misses"], belady(&trace, 16).misses);

    // One policy asked for: it and Belady.
    let v = simulate_json(&[
        "--policy",
        "lru",
        "--trace",
        "zipf",
        "--layers",
        "32",
        "--capacity",
        "8",
        "--len",
        "1000",
        "--exponent",
        "1.2",
        "--replay",
        "last-use",
    ]);
    let keys: Vec<&String> = v["results"].as_object().unwrap().keys().collect();
    assert_eq!(keys, ["belady", "lru"]);
    assert_eq!(v["replay"], "last-use");
}

#[test]
fn cli_simulate_reads_a_trace_file_and_prints_a_table() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("trace.txt");
    std::fs::write(
        &path,
        "# a loop over 4 layers\n0 1 2 3\n0 1 2 3\n0\n1\n2\n3\n",
    )
    .unwrap();
    let v = simulate_json(&["--trace", path.to_str().unwrap(), "--capacity", "2"]);
    assert_eq!(v["layers"], 4);
    assert_eq!(v["accesses"], 12);
    assert_eq!(v["results"]["lru"]["hits"], 0);

    let out = hyperion()
        .args([
            "simulate",
            "--trace",
            path.to_str().unwrap(),
            "--capacity",
            "2",
        ])
        .output()
        .unwrap();
    assert!(out.status.success());
    let table = String::from_utf8(out.stdout).unwrap();
    for word in ["lru", "adaptive", "belady", "hit rate", "of Belady"] {
        assert!(table.contains(word), "{table}");
    }
}

#[test]
fn cli_simulate_refuses_bad_input_with_one_line() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.txt");
    std::fs::write(&path, "0 1\n2 x\n").unwrap();
    let cases: [&[&str]; 3] = [
        &["--trace", "zipf", "--capacity", "4"],
        &["--trace", path.to_str().unwrap(), "--capacity", "4"],
        &[
            "--trace",
            "cyclic",
            "--layers",
            "4",
            "--capacity",
            "2",
            "--policy",
            "mru",
        ],
    ];
    for args in cases {
        let out = hyperion().arg("simulate").args(args).output().unwrap();
        assert!(!out.status.success(), "{args:?}");
        assert!(!out.stderr.is_empty());
    }
    let out = hyperion()
        .args([
            "simulate",
            "--trace",
            path.to_str().unwrap(),
            "--capacity",
            "4",
        ])
        .output()
        .unwrap();
    let err = String::from_utf8(out.stderr).unwrap();
    assert!(err.contains("line 2"), "{err}");
    // A trace with a layer beyond --layers.
    std::fs::write(&path, "0 9\n").unwrap();
    let out = hyperion()
        .args([
            "simulate",
            "--trace",
            path.to_str().unwrap(),
            "--layers",
            "4",
            "--capacity",
            "2",
        ])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("layer 9"));
}

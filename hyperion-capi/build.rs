//! Gives the C shared library an ELF soname, as a system library has.
//!
//! A program linked against `libhyperion.so` records the soname, not the file
//! name, so an ABI-breaking release (a new soname) can be installed beside the
//! old one. Before 1.0 every minor release may break, so the soname carries
//! `major.minor` (`libhyperion.so.0.1`); from 1.0, the major version alone.
//! `scripts/install-c.sh` installs the library under that name with the
//! usual symlinks.

use std::env;

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let os = env::var("CARGO_CFG_TARGET_OS").unwrap_or_default();
    if os == "linux" || os == "android" || os.ends_with("bsd") {
        let major = env::var("CARGO_PKG_VERSION_MAJOR").unwrap_or_else(|_| "0".into());
        let minor = env::var("CARGO_PKG_VERSION_MINOR").unwrap_or_else(|_| "0".into());
        let abi = if major == "0" {
            format!("0.{minor}")
        } else {
            major
        };
        println!("cargo:rustc-cdylib-link-arg=-Wl,-soname,libhyperion.so.{abi}");
    }
}

#!/usr/bin/env bash
# Builds the C library (cargo build --release) and installs it for C programs:
#
#   PREFIX/include/hyperion/utils/mmap_loader.h
#   PREFIX/lib/libhyperion.so.VERSION, .so.ABI and .so (symlinks), libhyperion.a
#   PREFIX/lib/pkgconfig/hyperion.pc
#
# Usage: scripts/install-c.sh [PREFIX]        (default /usr/local)
# Environment: LIBDIR, INCLUDEDIR (default PREFIX/lib, PREFIX/include),
# DESTDIR (staged installs: files go to DESTDIR/PREFIX/..., the .pc file
# still says PREFIX), CARGO_TARGET_DIR, HYPERION_SKIP_BUILD=1 (use what
# target/release already holds).
#
# Then: cc app.c $(pkg-config --cflags --libs hyperion)
# (static: cc app.c $(pkg-config --cflags hyperion) -l:libhyperion.a \
#          $(pkg-config --static --libs hyperion | sed 's/-lhyperion//'))
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

prefix=${1:-/usr/local}
case $prefix in /*) ;; *) prefix=$(pwd)/$prefix ;; esac
prefix=${prefix%/}
libdir=${LIBDIR:-$prefix/lib}
includedir=${INCLUDEDIR:-$prefix/include}
destdir=${DESTDIR:-}
. "$root/scripts/target-dir.sh"
target=$target_dir/release

if [ "${HYPERION_SKIP_BUILD:-0}" != 1 ]; then
    cargo build --release -p hyperion-capi
fi
# The crate builds them as libhyperion_capi.*; they are installed as libhyperion.*.
for f in libhyperion_capi.so libhyperion_capi.a; do
    [ -f "$target/$f" ] || { echo "install-c: $target/$f is missing (build failed?)" >&2; exit 1; }
done

version=$(sed -n 's/^version *= *"\([^"]*\)".*/\1/p' Cargo.toml | head -n1)  # [workspace.package]
major=${version%%.*}
minor=${version#*.}; minor=${minor%%.*}
# The soname build.rs gives the library: major.minor before 1.0, else major.
if [ "$major" = 0 ]; then abi=0.$minor; else abi=$major; fi

# What a static link needs besides libhyperion.a: the native libraries of
# Rust's std (the crate's dependencies link none of their own). Asked of
# rustc itself, with a fallback for glibc targets.
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
native=$(echo '' | "${RUSTC:-rustc}" --crate-type staticlib --crate-name probe \
    --print native-static-libs -o "$probe/libprobe.a" - 2>&1 >/dev/null \
    | sed -n 's/.*native-static-libs: //p' | tail -n1)
native=${native:--lgcc_s -lutil -lrt -lpthread -lm -ldl -lc}

# The .pc file names directories relative to ${prefix} where it can.
pc_libdir=$libdir
pc_includedir=$includedir
case $libdir in "$prefix"/*) pc_libdir='${prefix}'${libdir#"$prefix"} ;; esac
case $includedir in "$prefix"/*) pc_includedir='${prefix}'${includedir#"$prefix"} ;; esac

install -d "$destdir$includedir/hyperion/utils" "$destdir$libdir/pkgconfig"
install -m 644 hyperion-capi/include/hyperion/utils/mmap_loader.h "$destdir$includedir/hyperion/utils/"
install -m 755 "$target/libhyperion_capi.so" "$destdir$libdir/libhyperion.so.$version"
ln -sf "libhyperion.so.$version" "$destdir$libdir/libhyperion.so.$abi"
ln -sf "libhyperion.so.$abi" "$destdir$libdir/libhyperion.so"
install -m 644 "$target/libhyperion_capi.a" "$destdir$libdir/libhyperion.a"
cat > "$destdir$libdir/pkgconfig/hyperion.pc" <<PC
prefix=$prefix
libdir=$pc_libdir
includedir=$pc_includedir

Name: hyperion
Description: Serves model weights layer by layer within a hard memory budget (C API)
Version: $version
Cflags: -I\${includedir}
Libs: -L\${libdir} -lhyperion
Libs.private: $native
PC
chmod 644 "$destdir$libdir/pkgconfig/hyperion.pc"

if [ -z "$destdir" ] && [ "$(id -u)" = 0 ] && command -v ldconfig >/dev/null \
    && { [ "$prefix" = /usr/local ] || [ "$prefix" = /usr ]; }; then
    ldconfig
else
    echo "install-c: if $libdir is not searched by the dynamic loader, run programs with" \
        "LD_LIBRARY_PATH=$libdir or link them with -Wl,-rpath,$libdir"
fi
if [ -z "$destdir" ] && ! pkg-config --exists hyperion 2>/dev/null; then
    echo "install-c: pkg-config does not search $libdir/pkgconfig (or is not installed):" \
        "export PKG_CONFIG_PATH=$libdir/pkgconfig"
fi
echo "install-c: installed hyperion $version (soname libhyperion.so.$abi) into $destdir$prefix"

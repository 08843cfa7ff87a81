#!/usr/bin/env bash
# The C API's tests: builds the library (cargo build --release), installs it
# into a temporary prefix with scripts/install-c.sh, and builds the C programs
# of examples/c against it the way a user would (pkg-config).
#
#   header-*      the header compiles as C99, C11 and C++11 with -Werror, and a
#                 C++ program links against it (extern "C")
#   layout        the structs' field types, sizes and offsets ($capi/examples/c/layout.c)
#   drift         the header declares exactly the functions the library exports
#   spec-*        docs/api.md's usage example, verbatim, dynamic and static, run on a
#                 24 x 8 MiB model with its exact expected output
#   null_and_range, stress
#                 the error contract; 8 threads hammering one model, every byte
#                 checked against the file
#   asan-*        the same under AddressSanitizer (+ LeakSanitizer), static link
#   valgrind-*    the same under valgrind memcheck, dynamic link
#
# Prints one line per test and a final "N passed, N failed"; exits non-zero if
# any failed. Installs gcc, g++, pkg-config or valgrind with apt-get when one
# is missing and we are root. VERBOSE=1 prints every test's output.
set -uo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

passed=0
failed=0
work=$(mktemp -d "${TMPDIR:-/tmp}/hyperion-c-tests.XXXXXX")
trap 'rm -rf "$work"' EXIT
logs=$work/logs
mkdir -p "$logs"

# run NAME COMMAND...: runs one test, prints "ok NAME (last line)" or "FAIL
# NAME" and the test's output.
run() {
    local name=$1
    shift
    local log=$logs/$name.log
    if "$@" >"$log" 2>&1; then
        passed=$((passed + 1))
        local last
        last=$(grep -v '^[[:space:]]*$' "$log" | tail -n1)
        printf 'ok   %-26s %s\n' "$name" "${last:+($last)}"
        [ "${VERBOSE:-0}" = 1 ] && sed 's/^/     | /' "$log"
    else
        failed=$((failed + 1))
        printf 'FAIL %s\n' "$name"
        sed 's/^/     | /' "$log" | tail -n 60
    fi
    return 0
}

need() {
    local cmd=$1 pkg=$2
    command -v "$cmd" >/dev/null && return 0
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
        echo "c-tests: installing $pkg (for $cmd)"
        { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "$pkg"; } \
            >"$logs/apt-$pkg.log" 2>&1 || { cat "$logs/apt-$pkg.log"; return 1; }
    else
        echo "c-tests: $cmd is missing; install the $pkg package" >&2
        return 1
    fi
}
need gcc gcc && need g++ g++ && need pkg-config pkg-config && need valgrind valgrind || exit 1

CC=${CC:-gcc}
CXX=${CXX:-g++}
. "$root/scripts/target-dir.sh"
target=$target_dir/release
prefix=$work/prefix
export PKG_CONFIG_PATH=$prefix/lib/pkgconfig
capi=hyperion-capi
header=$capi/include/hyperion/utils/mmap_loader.h
warn=(-Wall -Wextra -Wpedantic -Werror)

run build cargo build --release
run install env HYPERION_SKIP_BUILD=1 scripts/install-c.sh "$prefix"
if [ "$failed" != 0 ] || ! pkg-config --exists hyperion; then
    echo "c-tests: no library or hyperion.pc to test; stopping"
    echo "$passed passed, $((failed + 1)) failed"
    exit 1
fi
cflags=$(pkg-config --cflags hyperion)
libs=$(pkg-config --libs hyperion)
# Static: libhyperion.a plus Libs.private, as pkg-config --static gives them.
static_libs=$(pkg-config --static --libs hyperion | sed 's/-lhyperion\b/-l:libhyperion.a/')
export LD_LIBRARY_PATH=$prefix/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}

# --- the header -------------------------------------------------------------

include_only() { printf '#include <hyperion/utils/mmap_loader.h>\n'; }
header_c() { include_only | "$CC" -std="$1" "${warn[@]}" $cflags -fsyntax-only -x c -; }
run header-c99 header_c c99
run header-c11 header_c c11
header_cxx() {
    include_only | "$CXX" -std=c++11 "${warn[@]}" $cflags -fsyntax-only -x c++ - || return 1
    # Linking proves the declarations have C linkage inside extern "C".
    cat >"$work/link.cpp" <<'CPP'
#include <hyperion/utils/mmap_loader.h>
#include <cstdio>
int main() {
    HyperionMmapConfig c = hyperionCreateDefaultMmapConfig();
    HyperionMappedModel *m = hyperionOpenMappedModel(nullptr, &c);
    std::printf("c++: open(nullptr) -> %p, %s\n", static_cast<void *>(m), hyperionLastError());
    return m == nullptr && hyperionLastError() != nullptr ? 0 : 1;
}
CPP
    "$CXX" -std=c++11 "${warn[@]}" "$work/link.cpp" $cflags $libs -o "$work/link_cxx" && "$work/link_cxx"
}
run header-c++ header_cxx

layout() {
    "$CC" -std=c11 "${warn[@]}" $capi/examples/c/layout.c $cflags $libs -o "$work/layout" && "$work/layout"
}
run layout layout

drift() {
    # Function names the header declares (after the preprocessor drops the
    # comments: identifiers starting with "hyperion" followed by "("),
    # against the library's exports.
    "$CC" -E -P $cflags -x c "$header" | grep -oE '\bhyperion[A-Za-z0-9_]*[[:space:]]*\(' \
        | tr -d '( \t' | sort -u >"$work/declared"
    nm -D --defined-only "$target/libhyperion_capi.so" | awk '$2 == "T" && $3 ~ /^hyperion/ { print $3 }' \
        | sort -u >"$work/exported"
    if ! diff -u "$work/declared" "$work/exported"; then
        echo "drift: header declarations (-) and library exports (+) differ"
        return 1
    fi
    # The static library defines the same functions.
    nm --defined-only "$target/libhyperion_capi.a" 2>/dev/null | awk '$2 == "T" && $3 ~ /^hyperion/ { print $3 }' \
        | sort -u | diff -u "$work/exported" - || return 1
    echo "drift: $(wc -l <"$work/exported") functions declared and exported, none missing or extra"
}
run drift drift

# --- the API's usage example (docs/api.md) -----------------------------------------------------

spec_verbatim() {
    # docs/api.md, the API reference, carries the usage example that every
    # C user starts from; examples/c/spec_example.c must be it, byte for byte.
    awk '/^## Usage example/ { f = 1; next } f && /^```c/ { c = 1; next } c && /^```/ { exit } c' \
        docs/api.md | diff -u - $capi/examples/c/spec_example.c || return 1
    echo "$capi/examples/c/spec_example.c is docs/api.md's usage example verbatim"
}
run spec-verbatim spec_verbatim

mkdir -p "$work/spec"
run model-24x8MiB "$target/hyperion" synth --layers 24 --layer-size 8388608 "$work/spec/model.tmai"
{
    echo "Model has 24 layers"
    for i in $(seq 0 23); do echo "Layer $i loaded successfully"; done
    # Odd layers stay held (12 x 8 MiB); even ones were released.
    echo "Memory usage: 96.00 MB"
} >"$work/spec/expected"
spec_run() {
    (cd "$work/spec" && "$1" >"$work/spec/out.$2") || return 1
    cat "$work/spec/out.$2"
    diff -u "$work/spec/expected" "$work/spec/out.$2"
}
spec_dynamic() {
    # Exactly as a user would: the example unmodified, pkg-config's flags.
    "$CC" $capi/examples/c/spec_example.c $cflags $libs -o "$work/spec_example" || return 1
    readelf -d "$work/spec_example" | grep -q 'NEEDED.*libhyperion\.so' || return 1
    spec_run "$work/spec_example" dynamic
}
run spec-example spec_dynamic
spec_static() {
    "$CC" $capi/examples/c/spec_example.c $cflags $static_libs -o "$work/spec_example_static" || return 1
    if readelf -d "$work/spec_example_static" | grep -q 'NEEDED.*libhyperion'; then
        echo "linked dynamically, not against libhyperion.a"
        return 1
    fi
    spec_run "$work/spec_example_static" static
}
run spec-example-static spec_static

# --- the test programs ------------------------------------------------------

run model-32x256KiB "$target/hyperion" synth --layers 32 --layer-size 262144 "$work/small.tmai"
build_test() { # OUT SOURCE FLAGS...: builds $capi/examples/c/SOURCE.c into $work/OUT
    local out=$1 src=$2
    shift 2
    "$CC" -std=c11 "${warn[@]}" -O1 -g "$capi/examples/c/$src.c" "$@" -lpthread -lm -o "$work/$out"
}
in_work() { (cd "$work" && "$@"); }

null_and_range() { build_test null_and_range null_and_range $cflags $libs && in_work ./null_and_range small.tmai; }
run null_and_range null_and_range
stress() { build_test stress stress $cflags $libs && in_work ./stress small.tmai 8 3000; }
run stress stress

# AddressSanitizer (with LeakSanitizer): the C code is instrumented; the Rust
# code's allocations go through the intercepted malloc, so leaks and frees of
# bad pointers anywhere are caught. Static link.
asan=(-fsanitize=address -fno-omit-frame-pointer)
export ASAN_OPTIONS=${ASAN_OPTIONS:-detect_leaks=1:abort_on_error=0:halt_on_error=1}
asan_null() { build_test asan_null_and_range null_and_range "${asan[@]}" $cflags $static_libs && in_work ./asan_null_and_range small.tmai; }
run asan-null_and_range asan_null
asan_stress() { build_test asan_stress stress "${asan[@]}" $cflags $static_libs && in_work ./asan_stress small.tmai 8 2000; }
run asan-stress asan_stress
asan_spec() {
    "$CC" "${asan[@]}" -g $capi/examples/c/spec_example.c $cflags $static_libs -o "$work/asan_spec_example" || return 1
    spec_run "$work/asan_spec_example" asan
}
run asan-spec-example asan_spec

# valgrind memcheck, dynamic link: any memory error fails, and so does a
# definite or indirect leak. ("Possibly lost" blocks are not leaks here: the
# TLS blocks of threads still running at exit (the internal runtime's, which
# live as long as the process), and hash tables whose only pointer points
# into the middle of their allocation. LeakSanitizer, above, sees those as
# reachable and finds no leak either.)
vg=(valgrind --error-exitcode=1 --leak-check=full --errors-for-leak-kinds=definite,indirect --show-possibly-lost=no)
vg_null() { in_work "${vg[@]}" ./null_and_range small.tmai; }
run valgrind-null_and_range vg_null
vg_stress() { in_work "${vg[@]}" ./stress small.tmai 8 200; }
run valgrind-stress vg_stress

echo "$passed passed, $failed failed"
[ "$failed" = 0 ]

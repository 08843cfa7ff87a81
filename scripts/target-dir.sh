# Sourced by the scripts: sets $target_dir to cargo's target directory for
# this workspace, wherever it is (CARGO_TARGET_DIR, .cargo/config.toml's
# build.target-dir, or ./target), as `cargo metadata` reports it.
#   . "$root/scripts/target-dir.sh"; "$target_dir/release/hyperion" ...
target_dir=$(cd "${root:?}" && cargo metadata --format-version 1 --no-deps 2>/dev/null \
    | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')
if [ -z "$target_dir" ]; then
    echo "cargo metadata did not report a target directory" >&2
    exit 1
fi

#!/usr/bin/env bash
# Installs the C library, header and pkg-config file.
#
#   scripts/install.sh [--prefix DIR] [--no-build]
#
# Layout under DIR (default /usr/local):
#   include/erlmcp_flow.h
#   lib/liberlmcp_flow.so.<version>   (soname liberlmcp_flow.so.<ABI>) + .so.<ABI> and .so links
#   lib/liberlmcp_flow.a
#   lib/pkgconfig/erlmcp_flow.pc
# Then: cc app.c $(pkg-config --cflags --libs erlmcp_flow)
set -euo pipefail
cd "$(dirname "$0")/.."
prefix=/usr/local
build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --prefix=*) prefix="${1#--prefix=}"; shift ;;
    --no-build) build=0; shift ;;
    *) echo "usage: $0 [--prefix DIR] [--no-build]" >&2; exit 2 ;;
  esac
done
if [ "$build" = 1 ]; then
  cargo build --release -p erlmcp-flow-cdylib --quiet
fi
target="${CARGO_TARGET_DIR:-target}/release"
version=$(sed -n 's/^version = "\(.*\)"/\1/p' Cargo.toml | head -n1)
abi=$(sed -n 's/^pub const EMF_ABI_VERSION: u32 = \([0-9]*\);/\1/p' crates/capi/src/lib.rs)
mkdir -p "$prefix/include" "$prefix/lib/pkgconfig"
install -m 0644 include/erlmcp_flow.h "$prefix/include/erlmcp_flow.h"
install -m 0755 "$target/liberlmcp_flow.so" "$prefix/lib/liberlmcp_flow.so.$version"
ln -sf "liberlmcp_flow.so.$version" "$prefix/lib/liberlmcp_flow.so.$abi"
ln -sf "liberlmcp_flow.so.$abi" "$prefix/lib/liberlmcp_flow.so"
install -m 0644 "$target/liberlmcp_flow.a" "$prefix/lib/liberlmcp_flow.a"
sed -e "s|@PREFIX@|$prefix|" -e "s|@VERSION@|$version|" erlmcp_flow.pc.in \
  > "$prefix/lib/pkgconfig/erlmcp_flow.pc"
echo "installed erlmcp_flow $version (ABI $abi) under $prefix"

#!/usr/bin/env bash
# Installs miad's C library for C and C++ users, with the layout cargo-c uses (as
# rustls-ffi does):
#   PREFIX/include/miad.h
#   LIBDIR/libmiad.so.X.Y.Z, libmiad.so.0 -> it (the SONAME), libmiad.so -> libmiad.so.0
#   LIBDIR/libmiad.a
#   LIBDIR/pkgconfig/miad.pc                 (pkg-config --cflags --libs miad)
#   LIBDIR/cmake/miad/miadConfig.cmake       (find_package(miad CONFIG); miad::miad)
#   LIBDIR/cmake/miad/miadConfigVersion.cmake
#
# Usage: pkg/install.sh [--prefix DIR] [--libdir DIR] [--destdir DIR] [--from DIR]
#   --prefix   install prefix (default /usr/local)
#   --libdir   library directory (default PREFIX/lib)
#   --destdir  staging root prepended to every path (packaging), as DESTDIR
#   --from     a directory holding an already built libmiad.so and libmiad.a; without
#              it the runtime-only library is built with
#              `cargo build --release --no-default-features --lib`
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
prefix=/usr/local
libdir=""
destdir=""
from=""
while [ $# -gt 0 ]; do
  case "$1" in
    --prefix) prefix="$2"; shift 2 ;;
    --libdir) libdir="$2"; shift 2 ;;
    --destdir) destdir="$2"; shift 2 ;;
    --from) from="$2"; shift 2 ;;
    -h|--help) sed -n '2,17p' "$0"; exit 0 ;;
    *) echo "install.sh: unknown argument $1" >&2; exit 2 ;;
  esac
done
case "$prefix" in /*) ;; *) echo "install.sh: --prefix must be absolute" >&2; exit 2 ;; esac
libdir="${libdir:-$prefix/lib}"
includedir="$prefix/include"
version="$(sed -n 's/^version = "\(.*\)"/\1/p' "$root/Cargo.toml" | head -n1)"
major="${version%%.*}"
rest="${version#*.}"
minor="${rest%%.*}"

if [ -z "$from" ]; then
  (cd "$root" && cargo build --release --no-default-features --lib)
  from="${CARGO_TARGET_DIR:-$root/target}/release"
fi
for f in libmiad.so libmiad.a; do
  [ -f "$from/$f" ] || { echo "install.sh: $from/$f not found" >&2; exit 1; }
done

L="$destdir$libdir"
install -d "$destdir$includedir" "$L/pkgconfig" "$L/cmake/miad"
install -m 644 "$root/runtime/include/miad.h" "$destdir$includedir/miad.h"
install -m 755 "$from/libmiad.so" "$L/libmiad.so.$version"
ln -sf "libmiad.so.$version" "$L/libmiad.so.$major"
ln -sf "libmiad.so.$major" "$L/libmiad.so"
install -m 644 "$from/libmiad.a" "$L/libmiad.a"

# Relative paths from the CMake package folder, so the installed tree can be moved.
rel() { python3 -c 'import os,sys; print(os.path.relpath(sys.argv[1], sys.argv[2]))' "$1" "$2"; }
cmake_dir="$libdir/cmake/miad"
subst() {
  sed -e "s|@PREFIX@|$prefix|g" -e "s|@LIBDIR@|$libdir|g" -e "s|@INCLUDEDIR@|$includedir|g" \
      -e "s|@VERSION@|$version|g" -e "s|@MAJOR@|$major|g" -e "s|@MINOR@|$minor|g" \
      -e "s|@CMAKE_TO_PREFIX@|$(rel "$prefix" "$cmake_dir")|g" \
      -e "s|@INCLUDE_REL@|$(rel "$includedir" "$prefix")|g" \
      -e "s|@LIB_REL@|$(rel "$libdir" "$prefix")|g" "$1"
}
subst "$root/pkg/miad.pc.in" > "$L/pkgconfig/miad.pc"
subst "$root/pkg/miadConfig.cmake.in" > "$L/cmake/miad/miadConfig.cmake"
subst "$root/pkg/miadConfigVersion.cmake.in" > "$L/cmake/miad/miadConfigVersion.cmake"
echo "installed miad $version under $destdir$prefix (library $L, header $destdir$includedir)"

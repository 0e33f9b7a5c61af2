#!/usr/bin/env bash
# Gather the two libraries tailor links that the bare GPU machine lacks (cJSON, libmicrohttpd,
# and the shared libraries libmicrohttpd needs) into .gpudeps/, from this machine's Debian
# packages, so that a device `run` can carry them (name ".gpudeps" in carry; scripts/gpu.sh
# uses them when /usr/include/cjson is missing there). .gpudeps must stay out of git:
#   echo /.gpudeps/ >> .git/info/exclude
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/deps.sh
D=.gpudeps
rm -rf "$D" && mkdir -p "$D/include/cjson" "$D/lib"
cp /usr/include/cjson/cJSON.h "$D/include/cjson/"
cp /usr/include/microhttpd.h "$D/include/"
for lib in libcjson.so libmicrohttpd.so; do
  path=$(ldconfig -p | awk -v l="$lib" '$1 == l {print $NF; exit}')
  [ -n "$path" ] || { echo "gpu-deps: $lib not found" >&2; exit 1; }
  cp -L "$path" "$D/lib/$lib"
  # the library, its soname and what it pulls in beyond glibc
  ldd "$path" | awk '$3 ~ /^\// {print $3}' | { grep -v -E 'libc\.so|libm\.so|libpthread|ld-linux' || true; } |
  while read -r dep; do
    cp -L "$dep" "$D/lib/"
  done
  soname=$(objdump -p "$path" | awk '/SONAME/ {print $2}')
  [ -n "$soname" ] && cp -L "$path" "$D/lib/$soname"
done
grep -qxF '/.gpudeps/' .git/info/exclude 2>/dev/null || echo '/.gpudeps/' >> .git/info/exclude
du -sh "$D"

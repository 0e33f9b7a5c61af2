#!/usr/bin/env bash
# Extract llama.cpp's tokenizer test vocabularies (models/ggml-vocab-*.gguf with their .inp/.out
# test files) from a llama.cpp source tree or git directory into a cache folder that
# test_tokenizer_vocabs reads (tests/model/test_tokenizer_vocabs.c). Nothing is downloaded and
# nothing goes into the repository: the files are 0.6-4 MB each.
#
# usage: scripts/fetch-vocabs.sh [LLAMA_CPP] [DEST]
#   LLAMA_CPP  a llama.cpp work tree (with models/) or git directory (bare or mirror; HEAD is
#              read), default $TL_LLAMA_CPP
#   DEST       default $TL_VOCABS, else ~/.cache/tailor/vocabs
# Prints what was copied and which files the source lacks (a mirror can keep a file's name in
# its tree without its contents).
set -euo pipefail

src="${1:-${TL_LLAMA_CPP:-}}"
dest="${2:-${TL_VOCABS:-$HOME/.cache/tailor/vocabs}}"
if [ -z "$src" ]; then
    echo "usage: $0 LLAMA_CPP [DEST]  (or set TL_LLAMA_CPP): a llama.cpp work tree or git directory" >&2
    exit 2
fi
if [ ! -d "$src" ]; then
    echo "$0: $src: not a directory" >&2
    exit 2
fi
mkdir -p "$dest"

copied=0
missing=()
# a .gguf must start with its magic (a Git LFS pointer or an empty placeholder does not)
is_gguf_or_text() { case "$1" in *.gguf) [ "$(head -c 4 "$2" 2>/dev/null)" = GGUF ] ;; *) [ -s "$2" ] ;; esac; }
if [ -d "$src/models" ]; then                      # a work tree
    names=$(cd "$src/models" && ls ggml-vocab-*.gguf* 2>/dev/null || true)
    for n in $names; do
        if is_gguf_or_text "$n" "$src/models/$n"; then
            cp -f "$src/models/$n" "$dest/$n.tmp" && mv -f "$dest/$n.tmp" "$dest/$n"
            copied=$((copied + 1))
        else
            missing+=("$n")
        fi
    done
elif git -C "$src" rev-parse --git-dir >/dev/null 2>&1; then   # a git directory
    rev="${TL_LLAMA_CPP_REV:-HEAD}"
    names=$(git -C "$src" ls-tree --name-only "$rev" models/ | sed -n 's|^models/\(ggml-vocab-.*\.gguf.*\)$|\1|p')
    for n in $names; do
        if git -C "$src" cat-file -e "$rev:models/$n" 2>/dev/null &&
            git -C "$src" cat-file blob "$rev:models/$n" > "$dest/$n.tmp" && is_gguf_or_text "$n" "$dest/$n.tmp"; then
            mv -f "$dest/$n.tmp" "$dest/$n"
            copied=$((copied + 1))
        else
            rm -f "$dest/$n.tmp"
            missing+=("$n")
        fi
    done
else
    echo "$0: $src: neither a llama.cpp work tree (models/) nor a git directory" >&2
    exit 2
fi

echo "copied $copied files into $dest"
for n in "${missing[@]}"; do echo "missing from the source: models/$n"; done
# the test runs a vocabulary only with its .inp and .out
for f in "$dest"/ggml-vocab-*.gguf; do
    [ -e "$f" ] || continue
    if [ -e "$f.inp" ] && [ -e "$f.out" ]; then echo "test:    $(basename "$f")"
    else echo "no test: $(basename "$f") (loaded and round-tripped only)"; fi
done
for f in "$dest"/ggml-vocab-*.gguf.inp; do
    [ -e "$f" ] || continue
    [ -e "${f%.inp}" ] || echo "test file without its vocabulary: $(basename "$f")"
done

#!/usr/bin/env bash
# Fetches the production builds GraphiQL's page runs on from npm, by exact version, into
# assets/vendor/ (embedded in the binary at build time, so no request leaves the origin).
#   scripts/vendor-assets.sh          re-fetch and rewrite assets/vendor/ and its SHA256SUMS
#   scripts/vendor-assets.sh --check  re-fetch into a scratch dir and fail if any committed file differs
#                                     (the .gz copies: if they do not decompress to their file)
# CI checks the committed files against SHA256SUMS offline (`sha256sum -c`); this script
# proves SHA256SUMS is what the npm packages contain.
set -euo pipefail
cd "$(dirname "$0")/.."

# package@version  file-in-package  name-in-assets/vendor
FILES=(
  "react@18.3.1 umd/react.production.min.js react.production.min.js"
  "react-dom@18.3.1 umd/react-dom.production.min.js react-dom.production.min.js"
  "graphiql@3.8.3 graphiql.min.js graphiql.min.js"
  "graphiql@3.8.3 graphiql.min.css graphiql.min.css"
  "graphql-ws@5.16.2 umd/graphql-ws.min.js graphql-ws.min.js"
)

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
out="$work/out"
mkdir -p "$out"
for entry in "${FILES[@]}"; do
  read -r pkg file name <<<"$entry"
  dir="$work/${pkg//\//_}"
  if [ ! -d "$dir" ]; then
    mkdir -p "$dir"
    tarball=$(cd "$dir" && npm pack --silent "$pkg")
    tar -xzf "$dir/$tarball" -C "$dir"
  fi
  cp "$dir/package/$file" "$out/$name"
done
(cd "$out" && sha256sum -- *.js *.css | sort -k2 >SHA256SUMS)
# The large files are also served gzipped (to browsers that accept it), compressed once here.
for name in graphiql.min.js graphiql.min.css react-dom.production.min.js; do
  gzip -9 -n -c "$out/$name" >"$out/$name.gz"
done
printf '%s\n' "${FILES[@]}" | awk '{ print $1 }' | sort -u >"$out/VERSIONS"

if [ "${1:-}" = "--check" ]; then
  # gzip's bytes may differ between gzip versions: compare what they decompress to.
  diff -r --exclude='*.gz' "$out" assets/vendor
  for gz in assets/vendor/*.gz; do gunzip -c "$gz" | cmp - "${gz%.gz}"; done
  diff <(cd "$out" && ls) <(cd assets/vendor && ls)
  echo "assets/vendor matches the npm packages"
else
  rm -rf assets/vendor
  cp -r "$out" assets/vendor
  echo "assets/vendor rewritten"
fi

#!/usr/bin/env bash
# Fetch axe-core (the accessibility rules engine, npm package axe-core, MPL-2.0) that the
# operator console's browser test injects into the page: .cache/axe/axe.min.js at the
# repository root (git-ignored). Only the test uses it; the console itself ships no npm code.
# Idempotent: nothing is downloaded when that file already holds the pinned version.
set -euo pipefail

PACKAGE="axe-core"
VERSION="${WATCHPOST_AXE_VERSION:-4.10.3}"
FILE="axe.min.js"

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/axe"
target="$cache/$FILE"
stamp="$cache/$FILE.version"

if [ -s "$target" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$VERSION" ]; then
  echo "fetch-axe: $PACKAGE@$VERSION already in .cache/axe/$FILE"
  exit 0
fi
command -v npm >/dev/null 2>&1 || { echo "fetch-axe: npm is needed (Debian: apt-get install npm)" >&2; exit 1; }

mkdir -p "$cache"
work="$(mktemp -d "$cache/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT
if ! (cd "$work" && npm pack --loglevel=error "$PACKAGE@$VERSION" >pack.out 2>pack.err); then
  echo "fetch-axe: 'npm pack $PACKAGE@$VERSION' failed:" >&2
  cat "$work/pack.err" >&2
  exit 1
fi
tarball="$work/$(tail -n 1 "$work/pack.out")"
tar -xzf "$tarball" -C "$work" "package/$FILE"
mv -f "$work/package/$FILE" "$target"
printf '%s\n' "$VERSION" >"$stamp"
echo "fetch-axe: wrote .cache/axe/$FILE ($(wc -c <"$target") bytes, $PACKAGE@$VERSION)"

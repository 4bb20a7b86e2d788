#!/bin/sh
# refresh-vendor.sh refreshes dashboard/static/vendor/ from npm: the
# standalone production build of lightweight-charts at the exact version
# pinned in dashboard/package.json, with its LICENSE and NOTICE. It also
# refreshes dashboard/test/vendor/ (axe-core's axe.min.js and its LICENSE,
# MPL-2.0, at the devDependencies version), which only the browser tests
# load: it is not embedded in the binary.
#
# Usage: dashboard/scripts/refresh-vendor.sh [version]
#
# Needs node and npm; nothing is installed into the repository (npm pack
# runs in a temporary directory, no node_modules is left behind). Running
# the dashboard never needs npm: the vendored files are embedded.
set -eu

here=$(cd "$(dirname "$0")/.." && pwd)
vendor="$here/static/vendor"
version=${1:-$(node -p "require('$here/package.json').dependencies['lightweight-charts']")}
case $version in
	*[!0-9.]*|'') echo "refresh-vendor: want an exact version like 5.2.1, got '$version'" >&2; exit 2 ;;
esac

tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
(cd "$tmp" && npm pack --silent "lightweight-charts@$version" >/dev/null)
tar -xzf "$tmp/lightweight-charts-$version.tgz" -C "$tmp"
pkg="$tmp/package"

got=$(node -p "require('$pkg/package.json').version")
[ "$got" = "$version" ] || { echo "refresh-vendor: npm gave $got, want $version" >&2; exit 1; }

mkdir -p "$vendor"
cp "$pkg/dist/lightweight-charts.standalone.production.js" "$vendor/"
cp "$pkg/LICENSE" "$vendor/LICENSE"
if [ -f "$pkg/NOTICE" ]; then
	cp "$pkg/NOTICE" "$vendor/NOTICE"
else
	# The npm package ships no NOTICE file; upstream's NOTICE (github.com/
	# tradingview/lightweight-charts/blob/master/NOTICE) is this notice.
	year=$(sed -n 's/.*Copyright (c) \([0-9]*\) TradingView.*/\1/p' "$vendor/lightweight-charts.standalone.production.js" | head -n 1)
	printf 'TradingView Lightweight Charts\nCopyright (c) %s TradingView, Inc. https://www.tradingview.com/\n' "${year:-2023}" >"$vendor/NOTICE"
fi
echo "lightweight-charts $version" >"$vendor/VERSION"
echo "refresh-vendor: lightweight-charts $version -> $vendor"

# axe-core, for the accessibility check of the browser tests.
axe=$(node -p "require('$here/package.json').devDependencies['axe-core']")
case $axe in
	*[!0-9.]*|'') echo "refresh-vendor: want an exact axe-core version like 4.14.1, got '$axe'" >&2; exit 2 ;;
esac
(cd "$tmp" && npm pack --silent "axe-core@$axe" >/dev/null)
mkdir -p "$tmp/axe" "$here/test/vendor"
tar -xzf "$tmp/axe-core-$axe.tgz" -C "$tmp/axe"
got=$(node -p "require('$tmp/axe/package/package.json').version")
[ "$got" = "$axe" ] || { echo "refresh-vendor: npm gave axe-core $got, want $axe" >&2; exit 1; }
cp "$tmp/axe/package/axe.min.js" "$tmp/axe/package/LICENSE" "$here/test/vendor/"
echo "axe-core $axe" >"$here/test/vendor/VERSION"
echo "refresh-vendor: axe-core $axe -> $here/test/vendor"

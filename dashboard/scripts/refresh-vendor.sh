#!/bin/sh
# refresh-vendor.sh refreshes dashboard/static/vendor/ from npm: the
# standalone production build of lightweight-charts at the exact version
# pinned in dashboard/package.json, with its LICENSE and NOTICE.
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

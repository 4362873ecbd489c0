#!/usr/bin/env bash
# Remake the README's report pictures (docs/report.png, docs/report-structures.png) from the
# offline demo, with headless Chromium. Run from anywhere, after `pip install .`.
set -euo pipefail
cd "$(dirname "$0")/.."
out="$(mktemp -d)"
trap 'rm -rf "$out"' EXIT
changedet run aoi/khojir.geojson --config configs/demo-khojir.toml --out "$out" --quiet >/dev/null 2>&1
report="$out/khojir/report.html"
shot() {  # shot PNG WIDTH,HEIGHT HTML: the top of the page at that window size
  chromium --headless --no-sandbox --disable-gpu --hide-scrollbars --window-size="$2" \
    --screenshot="$1" "file://$3" >/dev/null 2>&1
}
shot docs/report.png 1264,860 "$report"
# The structure rows alone: the rest of <main> hidden (the report's CSP allows inline styles).
sed 's#</head>#<style>main > :not(.wide) { display: none; }</style></head>#' "$report" \
  >"$out/khojir/rows.html"
shot docs/report-structures.png 1264,400 "$out/khojir/rows.html"
echo "wrote docs/report.png and docs/report-structures.png"

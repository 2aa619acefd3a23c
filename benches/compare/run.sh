#!/usr/bin/env bash
# Our HL7 reader against hl7-parser (Rust), and PyPI hl7 and hl7apy (Python), in one run on
# the same messages: generated ORU^R01 and, when ../shared/corpus is present, the corpus's
# messages that all four take. Prints messages/s per reader and the ratios to ours.
#   bash benches/compare/run.sh [SECONDS per reader, default 3]
# Needs the PyPI packages of tests/python-requirements.txt (.ci/run installs them).
set -euo pipefail
cd "$(dirname "$0")/../.."
secs=${1:-3}
python3 -c 'import hl7, hl7apy' 2>/dev/null || {
    echo "needs the PyPI parsers: python3 -m pip install -r tests/python-requirements.txt"
    exit 2
}
dir=$(mktemp -d)
trap 'rm -rf "$dir"' EXIT
cargo bench --quiet --bench compare -- --write "$dir/msgs"
python3 benches/compare/parsers.py --filter "$dir/msgs"
{
    cargo bench --quiet --bench compare -- --dir "$dir/msgs" --secs "$secs"
    python3 benches/compare/parsers.py --dir "$dir/msgs" --secs "$secs"
} | tee "$dir/results.jsonl"
python3 - "$dir/results.jsonl" <<'PY'
import json, sys
rows = [json.loads(l) for l in open(sys.argv[1]) if l.startswith("{")]
by = {r["reader"]: r for r in rows}
print(f"\n{rows[0]['messages']} messages, each reader over all of them in turn:")
for base in ("labroute_routing", "labroute_full"):
    for r in rows:
        if r["reader"].startswith("labroute"):
            continue
        print(f"  {base} / {r['reader']}: x{by[base]['per_second'] / max(r['per_second'], 1):.1f}")
PY

#!/usr/bin/env bash
# Builds each fuzz target's seed corpus under fuzz/corpus/<target> (not committed) from the
# project's own fixtures and, when it is there, the shared corpus (../shared/corpus beside
# the project: real French and CDC messages, never copied into the project).
set -euo pipefail
cd "$(dirname "$0")"
root=..
shared=$root/../shared/corpus
rm -rf corpus && mkdir -p corpus/{mllp_decoder,hl7_reader,hl7_differential,ack,routes_config,fhir_ingest}

hl7_files() {
    find "$root/tests/fixtures" -type f \( -name '*.hl7' -o -name '*.er7' \)
    [ -d "$shared" ] && find "$shared" -type f \( -name '*.hl7' -o -name '*.er7' \)
    return 0
}
fhir_files() {
    find "$root/tests/fixtures" -type f -name '*.json'
    [ -d "$shared" ] && find "$shared" -type f -name '*.fhir'
    return 0
}

n=0
while IFS= read -r f; do
    n=$((n + 1))
    cp "$f" "corpus/hl7_reader/$n"
    cp "$f" "corpus/ack/$n"
    # The MLLP decoder's input starts with a byte saying where to cut reads, then framed
    # messages.
    { printf '\007\013'; cat "$f"; printf '\034\015'; } > "corpus/mllp_decoder/$n"
done < <(hl7_files)
m=0
while IFS= read -r f; do
    m=$((m + 1))
    cp "$f" "corpus/fhir_ingest/$m"
done < <(fhir_files)
k=0
for f in "$root"/routes/*.toml "$root"/tests/fixtures/*.toml; do
    k=$((k + 1))
    cp "$f" "corpus/routes_config/$k"
done
if [ -d "$shared" ]; then
    echo "seeds: $n HL7, $m FHIR, $k routes files (project fixtures and $shared)"
else
    echo "seeds: $n HL7, $m FHIR, $k routes files (project fixtures only: $shared is absent)"
fi

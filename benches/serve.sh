# Sourced by the bench scripts (e2e.sh, writer.sh): `start_serve BINARY DATA_DIR` starts
# `labroute serve` on the embedded defaults (routes/, the development PKI) with that data
# directory, waits for its MLLP listener, and sets `serve` to its pid; the caller's EXIT
# trap stops it (`kill $(jobs -p)`). LABROUTE_ROUTES names another routes directory (say a
# copy of routes/ with `[store] write_ahead_log = true`, D28).
start_serve() {
    LABROUTE_LOG=error "$1" serve --routes "${LABROUTE_ROUTES:-routes}" --data "$2" &
    serve=$!
    for _ in $(seq 200); do
        (exec 3<>/dev/tcp/127.0.0.1/2575) 2>/dev/null && break
        sleep 0.05
    done
    kill -0 "$serve" 2>/dev/null || {
        echo "labroute serve did not start (another instance on routes/' ports 2575-2581?)"
        exit 1
    }
}

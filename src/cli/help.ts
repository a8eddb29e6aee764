/** Usage texts; settings are environment variables (or `.env`), and `--some-setting value` flags override them. */
export const HELP = `counter-mesh — per-tenant item counting on a mesh of Yjs G-Set counters

Usage: counter-mesh <command> [--setting value ...]

Commands:
  up           the whole mesh on this machine: coordinator + COUNTER_COUNT counters (npm start)
  coordinator  the REST API (one process, as a container runs it)
  counter      one counter (one process, as a container runs it)
  remove ID    remove counter ID from the mesh for good, through a coordinator
  leave ID     remove counter ID and wait until it has handed off its shards and is gone

Every setting is an environment variable (see .env.dist); a flag --http-port 8081 sets HTTP_PORT.
Run counter-mesh <command> --help for the settings (or options) each command reads.
Tools (from a clone of the repository): npm run chaos -- --help, npm run bench -- --help.
`;

const TEXTS: Record<string, string> = {
  up: `Usage: counter-mesh up [--counter-count 3] [--counter-base-port 9001] [--http-port 8080] [--data-dir ./data]

Starts the coordinator and COUNTER_COUNT counters as child processes on COUNTER_BASE_PORT,
COUNTER_BASE_PORT+1, ...; each counter keeps its data in DATA_DIR/counter-<n>. Logs of all
processes are interleaved, prefixed with the process name. A counter that dies is started again
after about a second. Ctrl-C or SIGTERM stops everything: each child gets SIGTERM and
SHUTDOWN_TIMEOUT_MS (plus 5 s) to stop before it is killed. A random CLUSTER_SECRET is generated
for the children when none is set. Settings: COUNTER_COUNT, COUNTER_BASE_PORT, HTTP_PORT, HOST,
DATA_DIR, SHUTDOWN_TIMEOUT_MS, LOG_LEVEL, and everything the coordinator and counters read.
`,
  coordinator: `Usage: counter-mesh coordinator [--http-port 8080] [--counters host:port,...]

Settings: HTTP_PORT, HOST, COUNTERS, COORDINATOR_ID, CLUSTER_SECRET, API_KEY, BODY_LIMIT,
MAX_BATCH, COUNTER_TIMEOUT_MS, DNS_REFRESH_MS, WRITE_QUORUM, READ_QUORUM, RATE_LIMIT_MAX,
RATE_LIMIT_WINDOW_MS, TLS_CERT, TLS_KEY, TLS_CA, HEARTBEAT_MS, RECONNECT_MAX_MS, METRICS,
SHUTDOWN_TIMEOUT_MS, LOG_LEVEL. SIGHUP re-reads the TLS files.

SIGTERM or SIGINT: stops accepting connections, answers the requests already received (at most
SHUTDOWN_TIMEOUT_MS), closes the counter links, exits 0.
`,
  counter: `Usage: counter-mesh counter [--counter-port 9001] [--peers host:port,...] [--data-dir ./data]

Settings: COUNTER_PORT, HOST, COUNTER_ID, PEERS, DATA_DIR, ADVERTISE_ADDRESS, CLUSTER_SECRET,
HEARTBEAT_MS, ANTI_ENTROPY_MS, GOSSIP_DELAY_MS, COMPACT_BYTES, MAX_MESSAGE_BYTES,
RECONNECT_MAX_MS, TLS_CERT, TLS_KEY, TLS_CA, TLS_CLIENT_AUTH, METRICS, SHUTDOWN_TIMEOUT_MS,
LOG_LEVEL. SIGHUP re-reads the TLS files.

SIGTERM or SIGINT: reports not ready, answers the adds already taken once they are fsynced (at
most SHUTDOWN_TIMEOUT_MS), hands its last updates to its peers, closes, exits 0.
`,
  remove: `Usage: counter-mesh remove ID [--coordinator URL]

Removes counter ID (its COUNTER_ID, as GET /counters lists it) from the mesh for good:
DELETE /counters/ID on the coordinator. A live counter hands its shards to the counters placed
for them and then exits; a dead one's shards are copied again from their other replicas. It is
never placed again. Prints the coordinator's answer; exit code 0 once the removal is accepted,
1 when it is refused or the coordinator cannot be reached, 2 for a bad argument.

  --coordinator URL  the coordinator (default http://127.0.0.1:HTTP_PORT, https:// when TLS_CERT is set)

Reads API_KEY (sent as Authorization: Bearer) and TLS_CA (trusted for https://) from the
environment or .env. SIGTERM on a counter is a stop, not a removal: a stopped counter stays a
member and its shards keep their other replicas.
`,
  leave: `Usage: counter-mesh leave ID [--coordinator URL] [--timeout S]

Removes counter ID like counter-mesh remove (an ID removed already is fine; a 503 is asked again
until the timeout), then waits until it
holds no shard (GET /shards) and the coordinator no longer lists it (GET /counters). Exit code 0
once it has left; 1 at the timeout (the removal stands and the handoff goes on: run leave again
to keep waiting), when the coordinator refuses, or when it cannot be reached; 2 for a bad argument.

  --coordinator URL  the coordinator (default http://127.0.0.1:HTTP_PORT, https:// when TLS_CERT is set)
  --timeout S        seconds to wait for the handoff (default 600)

Reads API_KEY and TLS_CA like counter-mesh remove.
`,
};

export function commandHelp(command: string): string | undefined {
  return TEXTS[command];
}

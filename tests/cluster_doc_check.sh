#!/usr/bin/env bash
# Runs the commands of jobs/cluster.md sections 2, 4, 6 and 7 on a two-node Ray cluster (head + one worker node on
# this machine) and fails on the first surprise. Manual check (~2-3 min), not part of pytest:
#
#     bash tests/cluster_doc_check.sh
#
# It re-runs itself in a new network + PID namespace: only a loopback interface (no traffic leaves the namespace,
# Ray's node IP is 127.0.0.1), and `ray stop` sees only the processes started here. Everything in the namespace
# ends with it. HOME is a temporary folder, so ~/.ray/auth_token of this machine is never touched.
set -u
if [ "${LONGVID_IN_NS:-}" != 1 ]; then
    exec env LONGVID_IN_NS=1 unshare --net --pid --fork --mount-proc --kill-child bash "$0" "$@"
fi
ip link set lo up
ROOT=$(mktemp -d /tmp/lvdoc.XXXXXX)
trap 'ray stop --force >/dev/null 2>&1; rm -rf "$ROOT"' EXIT
export HOME=$ROOT/home RAY_USAGE_STATS_ENABLED=0
mkdir -p "$HOME" "$ROOT/nohome"
unset RAY_AUTH_MODE RAY_AUTH_TOKEN RAY_AUTH_TOKEN_PATH RAY_ADDRESS RAY_API_SERVER_ADDRESS
fail() { echo "FAIL: $*"; exit 1; }
ok() { echo "ok: $*"; }
HEAD=127.0.0.1
WPORTS="--node-manager-port 56011 --object-manager-port 56012 --dashboard-agent-listen-port 56013
        --dashboard-agent-grpc-port 56014 --runtime-env-agent-port 56015 --metrics-export-port 56016"

# 2. token
ray get-auth-token --generate >/dev/null 2>&1 || fail "ray get-auth-token --generate"
TOKEN=$(ray get-auth-token 2>/dev/null)
[ "${#TOKEN}" -ge 32 ] && [ "$TOKEN" = "$(cat "$HOME/.ray/auth_token")" ] || fail "token file"
ok "token generated in ~/.ray/auth_token and printed by ray get-auth-token"
export RAY_AUTH_MODE=token

# 4. head and a worker node
ray start --head --port 6379 --dashboard-host 127.0.0.1 --dashboard-port 8265 --include-dashboard true \
    --num-cpus 1 >"$ROOT/head.log" 2>&1 || { tail -20 "$ROOT/head.log"; fail "ray start --head"; }
ok "head started"
if HOME=$ROOT/nohome timeout 120 ray start --address $HEAD:6379 --num-cpus 1 $WPORTS >"$ROOT/w0.log" 2>&1; then
    fail "a worker node without the token joined"
fi
grep -q "no authentication token was found" "$ROOT/w0.log" || { tail -5 "$ROOT/w0.log"; fail "refusal message"; }
ok "worker node without the token refused"
HOME=$ROOT/nohome RAY_AUTH_TOKEN=$TOKEN timeout 120 ray start --address $HEAD:6379 --num-cpus 1 $WPORTS \
    >"$ROOT/w1.log" 2>&1 || { tail -20 "$ROOT/w1.log"; fail "worker node with RAY_AUTH_TOKEN"; }
for _ in $(seq 30); do
    [ "$(ray status --address $HEAD:6379 2>/dev/null | grep -c ' node_')" = 2 ] && break
    sleep 2
done
[ "$(ray status --address $HEAD:6379 2>/dev/null | grep -c ' node_')" = 2 ] || fail "ray status does not list 2 nodes"
ok "worker node with the token joined; ray status lists 2 nodes"
if RAY_AUTH_MODE= timeout 60 ray status --address $HEAD:6379 >"$ROOT/s0.log" 2>&1; then
    fail "ray status without RAY_AUTH_MODE=token worked"
fi
ok "ray status without RAY_AUTH_MODE=token refused"

# 6. jobs
A=http://$HEAD:8265
ray job submit --address $A --submission-id sleeper --no-wait -- python -c "import time; print('up', flush=True); time.sleep(300)" \
    >"$ROOT/j.log" 2>&1 || { tail -20 "$ROOT/j.log"; fail "ray job submit --no-wait"; }
for _ in $(seq 90); do
    ray job status --address $A sleeper 2>&1 | grep -q RUNNING && break
    sleep 2
done
ray job status --address $A sleeper 2>&1 | grep -q RUNNING || fail "job not RUNNING"
ok "job submitted with --no-wait and RUNNING"
RAY_API_SERVER_ADDRESS=$A ray job list 2>&1 | grep -q sleeper || fail "RAY_API_SERVER_ADDRESS + ray job list"
ok "ray job list with RAY_API_SERVER_ADDRESS"
ray job stop --address $A sleeper >/dev/null 2>&1 || fail "ray job stop"
ray job status --address $A sleeper 2>&1 | grep -q "stopped" || fail "job not stopped"
ok "ray job stop"
if RAY_AUTH_MODE= ray job list --address $A >"$ROOT/l0.log" 2>&1; then fail "job list without the token worked"; fi
grep -q "Missing authentication token" "$ROOT/l0.log" || fail "refusal message of the Jobs API"
ok "Jobs API without RAY_AUTH_MODE=token refused (Missing authentication token)"

# 7. stop
ray stop >"$ROOT/stop.log" 2>&1 || fail "ray stop"
grep -q "Stopped all" "$ROOT/stop.log" || fail "ray stop output"
ok "ray stop"
echo "cluster_doc_check: all passed"

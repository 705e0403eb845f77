#!/usr/bin/env bash
# `make demo`: a guided tour: policy, plan, signed manifest, then a real session in a
# disposable microVM on the debian image (and the same under process isolation, as
# root) showing an allowed command, denied ones and blocked escape attempts.
# Usage: tests/demo.sh AIRLOCK_BIN ENFORCER_BIN STATE_DIR
set -euo pipefail
demo() {
  local airlock=$1 enforcer=$2 cache=$3 policy=manifests/policies/coding-agent.toml
  local work="$cache/demo"; rm -rf "$work"; mkdir -p "$work"
  step() { printf '\n\033[1m== %s\033[0m\n' "$*"; }
  step "airlock policy check (load, self-test examples, lint)"
  "$airlock" policy check manifests/policies/*.toml manifests/policies/*.rego
  for plan in allowed-commit needs-approval-push denied-secrets; do
    f=$(ls manifests/plans/$plan.*)
    step "airlock plan --plan $f"
    set +e; "$airlock" plan --policy $policy --plan "$f"; code=$?; set -e
    echo "exit code $code (0 allowed, 3 needs approval, 4 denied)"
  done
  step "the same git invocations, decided by the native engine and by Rego"
  for engine in $policy manifests/policies/coding-agent.rego; do
    echo "-- $engine"
    "$airlock" policy decide --policy $engine "tool git -C /w commit -m wip" "tool git push origin main" \
      "tool git -c core.sshCommand=evil push" "tool git reset HEAD~3 --hard" || true
  done
  step "airlock keygen / manifest mint / manifest verify"
  "$airlock" keygen --out "$work/keys"
  "$airlock" manifest mint --policy $policy --plan manifests/plans/allowed-commit.toml \
    --key "$work/keys/airlock.key" --image-id demo-image --cid 3 \
    --nonce 00112233445566778899aabbccddeeff > "$work/envelope.json"
  "$airlock" manifest verify --pub "$work/keys/airlock.pub" --cid 3 --image-id demo-image "$work/envelope.json"
  step "the static guest enforcer accepts it only for its own VM, image and nonce"
  "$enforcer" verify-manifest --pub "$work/keys/airlock.pub" --cid 3 --image-id demo-image \
    --nonce 00112233445566778899aabbccddeeff "$work/envelope.json" | head -c 0 && echo "accepted for cid 3"
  "$enforcer" verify-manifest --pub "$work/keys/airlock.pub" --cid 4 --image-id demo-image \
    --nonce 00112233445566778899aabbccddeeff "$work/envelope.json" || echo "(refused, as it must be)"
  step "one flipped byte in the envelope"
  sed 's/"payload": "ey/"payload": "ez/' "$work/envelope.json" > "$work/tampered.json"
  "$airlock" manifest verify --pub "$work/keys/airlock.pub" "$work/tampered.json" || echo "(refused, as it must be)"
  rm -f "$work/audit.jsonl" "$work/audit.jsonl.checkpoint"
  start_demo_registry "$work"
  vm_session "$airlock" "$enforcer" "$cache" "$work"
  process_session "$airlock" "$work"
  audit_check "$airlock" "$work"
  step "done: demo state in $work"
}

# A package server on the host's loopback: the sessions are granted its name
# (demo-registry.test, pinned to 127.0.0.1 with --resolve) on its port, nothing else.
start_demo_registry() {
  local work=$1
  mkdir -p "$work/registry"
  echo "hello from the demo registry" > "$work/registry/index.txt"
  rm -f "$work/registry.port"
  python3 -c '
import http.server, os, sys
os.chdir(sys.argv[1])
class Quiet(http.server.SimpleHTTPRequestHandler):
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Quiet)
with open(sys.argv[2] + ".tmp", "w") as f:
    f.write(str(server.server_address[1]))
os.rename(sys.argv[2] + ".tmp", sys.argv[2])
server.serve_forever()
' "$work/registry" "$work/registry.port" &
  REGISTRY_PID=$!
  trap 'kill $REGISTRY_PID 2>/dev/null || true' EXIT
  for _ in $(seq 100); do [ -s "$work/registry.port" ] && break; sleep 0.1; done
  REGISTRY_PORT=$(cat "$work/registry.port")
  echo "demo registry on 127.0.0.1:$REGISTRY_PORT"
}

# A shell script plays a hostile agent in a scratch repository; each numbered line is
# one attempt, and the summary at the end says what held.
AGENT_SCRIPT='
    echo "1. allowed: git commit through its shim"
    echo "a change" > notes.txt && git add notes.txt && git commit -q -m "agent change" && git log --oneline
    echo "2. asked: git push (the policy says ask; the demo'"'"'s scripted approver answers no)"
    git push origin main; echo "   exit $?"
    echo "3. denied: git reset --hard (the policy says deny)"
    git reset --hard HEAD~1; echo "   exit $?"
    echo "4. escape: run the real /usr/bin/git, bypassing the shim"
    /usr/bin/git status; echo "   exit $?"
    echo "5. escape: have the dynamic loader run it instead"
    /lib64/ld-linux-x86-64.so.2 /usr/bin/git status; echo "   exit $?"
    echo "6. escape: read the secret that sits next to the workspace on the host"
    cat @SECRET@; echo "   exit $?"
    echo "7. escape: write a script into the workspace and run it"
    printf "#!/bin/sh\necho pwned\n" > run.sh && chmod +x run.sh; ./run.sh; echo "   exit $?"
    echo "8. escape: copy a binary somewhere writable and run the copy"
    cat /bin/cat > /tmp/mycat; /tmp/mycat notes.txt; echo "   exit $?"
    echo "9. escape: make an allowed git call (git add) run a program, from a filter planted in .git/config"
    saved=$(cat .git/config); printf "[filter \"x\"]\n\tclean = touch pwned-by-filter\n" >> .git/config
    echo "* filter=x" > .gitattributes; git add notes.txt; echo "   exit $?"
    printf "%s\n" "$saved" > .git/config; : > .gitattributes
    echo "10. persistence: plant a post-commit hook and core.fsmonitor for the host user'"'"'s own git"
    printf "#!/bin/sh\ntouch pwned-by-hook\n" > .git/hooks/post-commit; chmod 755 .git/hooks/post-commit
    printf "[core]\n\tfsmonitor = \"touch pwned-by-fsmonitor; false\"\n" >> .git/config; echo "   planted (in the write layer)"
    echo "11. allowed: fetch from the granted name demo-registry.test (the host resolves and dials it)"
    curl -sS --max-time 30 http://demo-registry.test:@PORT@/index.txt; echo "   exit $?"
    echo "12. refused: fetch from a name the plan does not grant (through the proxy: a 403 with the reason)"
    curl -sS --max-time 30 http://exfil.test:@PORT@/index.txt; echo; echo "   exit $?"
    echo "13. refused: the same without the proxy (the sandbox DNS knows only granted names)"
    curl -sS --max-time 30 --noproxy "*" http://exfil.test:@PORT@/index.txt; echo "   exit $?"
'

# The summary of one session: each line is a property that must have held.
summarize() {
  local repo=$1 log=$2 ok=1
  check() { if eval "$2"; then echo "  held:  $1"; else echo "  BROKE: $1"; ok=0; fi; }
  check "the allowed commit landed on the host" \
    '[ "$(git -C "$repo" log -1 --format=%s)" = "agent change" ]'
  check "git push was refused, naming the rule" 'grep -q "rule .git-push." "$log"'
  check "git push went to the scripted approver, which saw the exact command" \
    'grep -q "\"argv\":\[\"git\",\"push\",\"origin\",\"main\"\]" "$(dirname "$repo")/approver-saw.json"'
  check "the agent read who denied it and why" 'grep -q "denied by demo-approver via approver-cmd .*: no pushes from the demo" "$log"'
  check "git reset --hard was refused, naming the rule" 'grep -q "rule .git-reset-hard." "$log"'
  check "the real git could not be executed" '! grep -q "^On branch" "$log"'
  check "the secret did not leak" '! grep -q TOPSECRET "$log"'
  check "the planted script did not run" '! grep -q "^pwned" "$log"'
  check "the copied binary did not run" '! grep -q "^a change" "$log"'
  check "an allowed git call could not be made to run a program (git's profile)" \
    '[ ! -e "$repo/pwned-by-filter" ] && grep -q "refused by profile .git." "$log"'
  git -c safe.directory='*' -C "$repo" status >/dev/null 2>&1
  git -c safe.directory='*' -c user.name=host -c user.email=host@example.invalid -C "$repo" \
    commit -q --allow-empty -m "the host user's own commit" >/dev/null 2>&1
  check "the fetch from the granted name worked" 'grep -q "^hello from the demo registry" "$log"'
  check "the fetch from an ungranted name was refused, with the host's reason" \
    'grep -q "\"error\":\"egress refused\".*exfil.test.*is not granted" "$log"'
  check "the ungranted name did not even resolve in the sandbox" 'grep -q "Could not resolve host: exfil.test" "$log"'
  check "the planted hook and fsmonitor were refused at merge-back; the host's git ran neither" \
    '[ ! -e "$repo/pwned-by-hook" ] && [ ! -e "$repo/pwned-by-fsmonitor" ] && grep -q "airlock: workspace: merged.*refused.*\.git/hooks/post-commit" "$log"'
  [ $ok = 1 ] || { echo "the sandbox let something through"; return 1; }
}

scratch_repo() {
  local work=$1 repo="$1/work"
  rm -rf "$repo" "$work/secret" "$work/approver-saw.json"
  # The approver: a script that keeps what it was shown and answers no.
  printf '#!/bin/sh\ncat > "%s/approver-saw.json"\necho %s\n' "$work" \
    "'{\"answer\":\"deny\",\"approver\":\"demo-approver\",\"comment\":\"no pushes from the demo\"}'" > "$work/approver.sh"
  chmod 755 "$work/approver.sh"
  mkdir -p "$repo" "$work/secret"
  echo "TOPSECRET-do-not-leak" > "$work/secret/token"
  git -C "$repo" init -q -b main
  git -C "$repo" -c user.name=demo -c user.email=demo@example.invalid commit -q --allow-empty -m "initial"
}

# The same agent in a disposable microVM booted from the debian image (git, python3,
# curl in a read-only rootfs), the workspace shared over virtio-fs.
vm_session() {
  local airlock=$1 enforcer=$2 cache=$3 work=$4
  step "airlock image build --profile debian (cached after the first build)"
  XDG_CACHE_HOME="$cache/xdg" "$airlock" image build --profile debian \
    --pub "$work/keys/airlock.pub" --out "$cache/images" \
    --enforcer "$enforcer" --shim "$(dirname "$enforcer")/airlock-shim"
  step "airlock image inspect debian (what the image gives a plan to grant)"
  "$airlock" image inspect debian --out "$cache/images" | grep -v '^                '
  step "airlock run (a microVM: boot, verify the manifest, apply the layers, run, destroy)"
  scratch_repo "$work"
  local repo="$work/work" script=${AGENT_SCRIPT//@SECRET@/$work/secret/token}
  script=${script//@PORT@/$REGISTRY_PORT}
  set +e
  XDG_CACHE_HOME="$cache/xdg" XDG_RUNTIME_DIR="$work/run" "$airlock" run \
    --image "$cache/images/debian" --key "$work/keys/airlock.key" --tools-dir "$cache/tools/bin" \
    --policy manifests/policies/process-demo.toml --plan manifests/plans/process-demo.toml \
    --approver-cmd "$work/approver.sh" --audit-log "$work/audit.jsonl" \
    --net "demo-registry.test:$REGISTRY_PORT" --resolve demo-registry.test=127.0.0.1 \
    --mount "$repo:/workspace:rw" -- /bin/sh -c "$script" 2>&1 | tee "$work/vm-session.log"
  local code=${PIPESTATUS[0]}
  set -e
  echo "session exit code $code"
  step "summary (microVM session)"
  summarize "$repo" "$work/vm-session.log"
  [ -z "$(ls -A "$work/run/airlock/vms" 2>/dev/null)" ] && echo "  held:  the VM and its helpers are gone, nothing left on disk"
}

process_session() {
  local airlock=$1 work=$2
  step "airlock run --isolation process: a sandboxed session (the enforcer's layers on this host's kernel)"
  if [ "$(id -u)" != 0 ]; then
    echo "skipped: process isolation needs root (it maps the agent to its own uid and idmaps its mounts)"
    return
  fi
  scratch_repo "$work"
  local repo="$work/work" script=${AGENT_SCRIPT//@SECRET@/$work/secret/token}
  script=${script//@PORT@/$REGISTRY_PORT}
  set +e
  "$airlock" run --isolation process --policy manifests/policies/process-demo.toml \
    --plan manifests/plans/process-demo.toml --mount "$repo:/workspace:rw" \
    --approver-cmd "$work/approver.sh" --audit-log "$work/audit.jsonl" --key "$work/keys/airlock.key" \
    --net "demo-registry.test:$REGISTRY_PORT" --resolve demo-registry.test=127.0.0.1 \
    -- /bin/sh -c "$script" 2>&1 | tee "$work/session.log"
  local code=${PIPESTATUS[0]}
  set -e
  echo "session exit code $code"
  step "summary (process isolation)"
  summarize "$repo" "$work/session.log"
}
# The audit log both sessions wrote: every decision, chained, each session sealed by a
# checkpoint signed with the launcher's key.
audit_check() {
  local airlock=$1 work=$2 log="$2/audit.jsonl"
  step "airlock audit show / verify (every decision of both sessions, chained and signed)"
  "$airlock" audit show "$log" | grep -E "git-push|net |checkpoint" || true
  "$airlock" audit verify --pub "$work/keys/airlock.pub" "$log"
  sed 's/"verdict":"denied"/"verdict":"approved"/' "$log" > "$work/audit-tampered.jsonl"
  echo "one verdict rewritten in a copy:"
  if "$airlock" audit verify --pub "$work/keys/airlock.pub" "$work/audit-tampered.jsonl"; then
    echo "  BROKE: the tampered log verified"; return 1
  fi
  echo "  held:  the edit is caught, naming the record"
}

demo "$@"

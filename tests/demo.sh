#!/usr/bin/env bash
# `make demo`: a guided tour of the decision plane (policy, plan, signed manifest).
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
  step "done: demo state in $work"
}
demo "$@"

#!/usr/bin/env bash
# `make run`: start tallystickd in the foreground with its embedded SQLite log in ./var, after
# printing where it listens and how to record a first call and verify the log.
# Usage: scripts/run.sh VENV_BIN
set -euo pipefail
bin=${1:-.venv/bin}
data=var
agent=demo-agent
shared="unix:$data/tallystickd.sock"

cat <<EOF
== tallystickd: the log is $data/tallystick.sqlite3 (SQLite, WAL); its public key is $data/log.pub
   shared socket (read-only: checkpoints, proofs, export): $shared
   agent $agent's socket (calls arriving there are recorded as $agent): unix:$data/agents/$agent.sock

== In another terminal, record a first call (prints the new entry's index):
   $bin/tallystick record --daemon $shared --agent-id $agent --model gpt-4o --input-tokens 120 --output-tokens 30

== then prove it is in the signed log, and verify the whole log offline:
   $bin/tallystick log checkpoint --daemon $shared
   $bin/tallystick log proof --daemon $shared --index 0 --size 1 --json
   $bin/tallystick log export --daemon $shared --out bundle.jsonl
   $bin/tallystick log verify bundle.jsonl --log-key $data/log.pub
   (or export straight from the database, also with the daemon stopped:
   $bin/tallystick log export --data-dir $data --out bundle.jsonl)

== Ctrl-C stops it: in-flight calls finish, a final checkpoint is signed, exit 0.
EOF
exec "$bin/tallystickd" --data-dir "$data" --agent "$agent"

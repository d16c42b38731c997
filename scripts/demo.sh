#!/usr/bin/env bash
# The main job for now: make fresh keys and tokens under var/demo with the CLI and verify them
# offline, including one tampered token that must be rejected. Usage: scripts/demo.sh VENV_BIN
set -euo pipefail
bin=${1:-.venv/bin}
ts="$bin/tallystick"
demo=var/demo-tokens
rm -rf "$demo"
mkdir -p "$demo"

echo "== keys"
"$ts" keygen --out "$demo/principal.pem"
"$ts" keygen --out "$demo/orchestrator.pem"
"$ts" keygen --out "$demo/agent.pem"

echo "== HDP: a principal delegates to an orchestrator, then to a search agent; each agent co-signs its hop"
"$ts" hdp issue --key "$demo/principal.pem" --principal alice@example.com --principal-type email \
  --session demo-session --intent "Summarise the Q3 report" --tool web_search --max-hops 5 \
  --bind-agent "orchestrator=$demo/orchestrator.pem.pub" --bind-agent "searcher=$demo/agent.pem.pub" \
  >"$demo/root.json"
"$ts" hdp extend "$demo/root.json" --key "$demo/principal.pem" --agent-id orchestrator \
  --agent-key "$demo/orchestrator.pem" --agent-type orchestrator --action "plan the summary" \
  >"$demo/hop1.json"
"$ts" hdp extend - --key "$demo/principal.pem" --agent-id searcher --agent-key "$demo/agent.pem" \
  --action "search the web for Q3 figures" <"$demo/hop1.json" >"$demo/hop2.json"
"$ts" hdp verify "$demo/hop2.json" --public-key "$demo/principal.pem.pub" --session demo-session \
  --profile require --json

echo "== HDP: the same token with one character of the intent changed must be rejected"
sed 's/Summarise/Summarize/' "$demo/hop2.json" >"$demo/tampered.json"
if "$ts" hdp verify "$demo/tampered.json" --public-key "$demo/principal.pem.pub" --json; then
  echo "demo: a tampered token verified" >&2
  exit 1
fi

echo "== AIP compact"
"$ts" aip issue --key "$demo/principal.pem" --subject aip:web:example.com/agents/searcher \
  --scope tool:search --budget-usd 2.50 --ttl 600 >"$demo/compact.jwt"
"$ts" aip verify "$demo/compact.jwt" --public-key "$demo/principal.pem.pub" --json

echo "== AIP chained: the agent receives a narrower delegation"
"$ts" aip issue --key "$demo/principal.pem" --subject alice@example.com --scope tool:search \
  --scope tool:email --max-depth 2 --chained >"$demo/chained.b64"
"$ts" aip delegate "$demo/chained.b64" --key "$demo/principal.pem" \
  --delegate "aip:key:agent" --scope tool:search --context "search for Q3 figures" >"$demo/delegated.b64"
"$ts" aip verify "$demo/delegated.b64" --public-key "$demo/principal.pem.pub" --tool tool:search --json
if "$ts" aip verify "$demo/delegated.b64" --public-key "$demo/principal.pem.pub" --tool tool:email --json; then
  echo "demo: a delegation widened its scope" >&2
  exit 1
fi
echo "demo: all checks behaved as expected; files in $demo"

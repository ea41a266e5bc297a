#!/usr/bin/env bash
# Ask a question about a local video with curl: the video goes inline as a base64 data URL.
# (With `vreason serve --allowed-local-media-path DIR` a file under DIR can be sent as
#  "file:///abs/path.mp4" instead, without encoding it.)
#
#   clients/examples/curl_chat.sh --base-url http://127.0.0.1:8000 --model vreason-demo --video clip.mp4
set -euo pipefail

BASE_URL=http://127.0.0.1:8000 MODEL=vreason-demo VIDEO= QUESTION="What happens in this video?" MAX_TOKENS=64
while [ $# -gt 0 ]; do
  case "$1" in
    --base-url) BASE_URL=$2; shift 2 ;;
    --model) MODEL=$2; shift 2 ;;
    --video) VIDEO=$2; shift 2 ;;
    --question) QUESTION=$2; shift 2 ;;
    --max-tokens) MAX_TOKENS=$2; shift 2 ;;
    *) echo "unknown argument: $1" >&2; exit 2 ;;
  esac
done
[ -f "$VIDEO" ] || { echo "--video FILE is required" >&2; exit 2; }
BASE_URL=${BASE_URL%/}; BASE_URL=${BASE_URL%/v1}
json_escape() { printf '%s' "$1" | sed 's/\\/\\\\/g; s/"/\\"/g'; }

# The body can be megabytes: build it in a file (command lines have a size limit) and let
# curl read it with -d @file.
BODY=$(mktemp); trap 'rm -f "$BODY"' EXIT
{
  printf '{"model": "%s", "max_tokens": %d, "temperature": 0,' "$(json_escape "$MODEL")" "$MAX_TOKENS"
  printf ' "vreason": {"enabled": true, "update_every": 2, "trace": false},'
  printf ' "messages": [{"role": "user", "content": [{"type": "video_url", "video_url": {"url": "data:video/mp4;base64,'
  base64 < "$VIDEO" | tr -d '\n'
  printf '"}}, {"type": "text", "text": "%s"}]}]}' "$(json_escape "$QUESTION")"
} > "$BODY"

curl -sS --fail-with-body "$BASE_URL/v1/chat/completions" -H 'Content-Type: application/json' -d @"$BODY"
echo

"""The kind scenario's client Job: an unmodified OpenAI client that must see cache hits.

It talks to http://localhost:8080/v1, where the webhook-injected sidecar
listens. Not a pytest module (no ``test_`` prefix): it runs inside the cluster
and exits non-zero when an expectation fails.
"""

from __future__ import annotations

import os
import sys
import time

import openai

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://localhost:8080/v1")
NUM_REPEATS = int(os.environ.get("NUM_REPEATS", "5"))


def wait_for_sidecar(client: openai.OpenAI, *, timeout_s: float = 300.0) -> None:
    """The native sidecar starts first, but the model behind it may still be loading."""
    deadline = time.monotonic() + timeout_s
    while True:
        try:
            client.models.list()
            return
        except openai.APIError as exc:
            if time.monotonic() > deadline:
                raise SystemExit(f"sidecar at {BASE_URL} not answering after {timeout_s:.0f} s: {exc}") from exc
            time.sleep(2)


def main() -> int:
    client = openai.OpenAI(base_url=BASE_URL, api_key=os.environ.get("OPENAI_API_KEY", "kind-tenant"))
    wait_for_sidecar(client)
    messages = [{"role": "user", "content": "Name three uses of a KV cache in one sentence."}]
    statuses: list[str] = []
    answers: list[str] = []
    for _ in range(NUM_REPEATS):
        raw = client.chat.completions.with_raw_response.create(
            model="default", messages=messages, max_tokens=32, temperature=0
        )
        statuses.append(raw.headers.get("x-llmcache-status", "absent"))
        answers.append(raw.parse().choices[0].message.content or "")
    print(f"statuses={statuses}")
    failures = []
    if statuses[0] != "miss":
        failures.append(f"first request should be a miss, got {statuses[0]}")
    if any(s != "hit" for s in statuses[1:]):
        failures.append(f"repeats should all be hits, got {statuses[1:]}")
    if len(set(answers)) != 1:
        failures.append("hits must replay the first answer exactly")
    for failure in failures:
        print(f"FAIL: {failure}", file=sys.stderr)
    print("kind scenario: ok" if not failures else "kind scenario: FAILED")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())

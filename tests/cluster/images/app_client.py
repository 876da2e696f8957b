"""The scenario's app: an unmodified official ``openai`` client, run inside the app container.

The cluster suite runs it with exec (``python /app_client.py ...``); it talks to
the injected sidecar at ``http://localhost:8080/v1`` like any app would and
prints one JSON line per request so the test can assert on cache statuses.

  ask PROMPT [PROMPT ...]          one chat completion per prompt, in order
      [--only-if-cached]           ... answered from the cache or 504, never stored
  load --seconds S --out FILE P..  round-robin requests for S seconds; writes a
                                   JSON summary (every status code and cache status)
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

import openai

BASE_URL = os.environ.get("OPENAI_BASE_URL", "http://localhost:8080/v1")
API_KEY = os.environ.get("OPENAI_API_KEY", "tenant-a")
MODEL = os.environ.get("LLMCACHE_MODEL", "default")


def client() -> openai.OpenAI:
    # max_retries=0: a failed request must show up as a failure, not be retried away.
    return openai.OpenAI(base_url=BASE_URL, api_key=API_KEY, max_retries=0, timeout=120)


def ask(c: openai.OpenAI, prompt: str, *, max_tokens: int, only_if_cached: bool = False) -> dict[str, object]:
    started = time.perf_counter()
    # only-if-cached: a miss answers 504 and stores nothing (probing the cache without filling it).
    headers = {"Cache-Control": "only-if-cached"} if only_if_cached else None
    try:
        raw = c.chat.completions.with_raw_response.create(
            model=MODEL, messages=[{"role": "user", "content": prompt}], max_tokens=max_tokens, temperature=0,
            extra_headers=headers)
    except openai.APIStatusError as exc:
        return {"http": exc.status_code, "status": exc.response.headers.get("x-llmcache-status", "absent"),
                "error": str(exc)[:300], "ms": (time.perf_counter() - started) * 1000}
    except openai.APIError as exc:
        return {"http": 0, "status": "error", "error": str(exc)[:300], "ms": (time.perf_counter() - started) * 1000}
    completion = raw.parse()
    return {"http": raw.status_code, "status": raw.headers.get("x-llmcache-status", "absent"),
            "similarity": raw.headers.get("x-llmcache-similarity"),
            "content": completion.choices[0].message.content or "", "ms": (time.perf_counter() - started) * 1000}


def main() -> int:
    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers(dest="cmd", required=True)
    a = sub.add_parser("ask")
    a.add_argument("prompts", nargs="+")
    a.add_argument("--max-tokens", type=int, default=16)
    a.add_argument("--only-if-cached", action="store_true")
    load = sub.add_parser("load")
    load.add_argument("prompts", nargs="+")
    load.add_argument("--seconds", type=float, required=True)
    load.add_argument("--out", required=True)
    load.add_argument("--max-tokens", type=int, default=8)
    args = parser.parse_args()
    c = client()
    if args.cmd == "ask":
        for prompt in args.prompts:
            print(json.dumps(ask(c, prompt, max_tokens=args.max_tokens, only_if_cached=args.only_if_cached)),
                  flush=True)
        return 0
    results = []
    deadline = time.monotonic() + args.seconds
    i = 0
    while time.monotonic() < deadline:
        r = ask(c, args.prompts[i % len(args.prompts)], max_tokens=args.max_tokens)
        r.pop("content", None)
        r["t"] = time.time()
        results.append(r)
        i += 1
        with open(args.out + ".count", "w") as f:  # progress, for a test that waits on it
            f.write(str(i))
    with open(args.out + ".partial", "w") as f:
        json.dump(results, f)
    os.replace(args.out + ".partial", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The OpenAI-API client of `tuner bench` for engines it reaches as a server (FlagScale, and vLLM with
`--served`): the same token-id requests, batches and teacher-forced prompt logprobs as the in-process
engine (tuner.serving.bench_engine), measured from the client side of the HTTP connection.

Per request (streamed `/v1/completions`, `stream_options.include_usage`): TTFT is the time from
sending the request to the first streamed token chunk, TPOT is (last token chunk - first) / (output
tokens - 1), the output tokens are the server's own count (the final usage chunk). These are vLLM's
per-request definitions (first_token_ts, last_token_ts, num_generation_tokens) taken one network
hop further out, so they are comparable between served engines, not with in-process numbers.
Standard library only (http.client in one thread per concurrent request)."""
from __future__ import annotations

import http.client
import json
import time
from concurrent.futures import ThreadPoolExecutor
from urllib.parse import urlsplit

from tuner.serving.bench_engine import Batch


class ServerError(RuntimeError):
    """The server answered with an error or broke the protocol."""


class Client:
    def __init__(self, base_url: str, api_key: str | None = None, timeout_s: float = 600.0):
        parts = urlsplit(base_url)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self.headers = {"Content-Type": "application/json",
                        **({"Authorization": f"Bearer {api_key}"} if api_key else {})}
        self.timeout_s = timeout_s
        self.model: str | None = None

    def _conn(self, timeout: float | None = None) -> http.client.HTTPConnection:
        return http.client.HTTPConnection(self.host, self.port, timeout=timeout or self.timeout_s)

    def _call(self, method: str, path: str, body: dict | None = None, timeout: float | None = None):
        conn = self._conn(timeout)
        try:
            conn.request(method, path, None if body is None else json.dumps(body), self.headers)
            resp = conn.getresponse()
            data = resp.read()
        finally:
            conn.close()
        if resp.status != 200:
            raise ServerError(f"{method} {path}: HTTP {resp.status}: {data[:300].decode(errors='replace')}")
        return json.loads(data)

    def ready(self) -> bool:
        """True once the server lists its model (vLLM answers /v1/models only when its engine is up);
        remembers the model's id for the requests."""
        try:
            models = self._call("GET", "/v1/models", timeout=5)
        except (OSError, ServerError, ValueError):
            return False
        ids = [m.get("id") for m in models.get("data", [])]
        if not ids:
            return False
        self.model = ids[0]
        return True

    def stream(self, prompt: list[int], max_tokens: int) -> tuple[float | None, float | None, int]:
        """One streamed greedy completion of `max_tokens` tokens (EOS ignored): (TTFT ms, TPOT ms, tokens)."""
        body = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": 0.0,
                "ignore_eos": True, "stream": True, "stream_options": {"include_usage": True}}
        conn = self._conn()
        try:
            t0 = time.perf_counter()
            conn.request("POST", "/v1/completions", json.dumps(body), self.headers)
            resp = conn.getresponse()
            if resp.status != 200:
                raise ServerError(f"POST /v1/completions: HTTP {resp.status}: "
                                  f"{resp.read()[:300].decode(errors='replace')}")
            first = last = None
            tokens, done = None, False
            for raw in resp:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                now = time.perf_counter()
                chunk = json.loads(data)
                if chunk.get("choices"):  # a token step; the usage chunk at the end has none
                    first = first if first is not None else now
                    last = now
                if chunk.get("usage"):
                    tokens = int(chunk["usage"]["completion_tokens"])
        finally:
            conn.close()
        if not done or tokens is None:
            raise ServerError("the completion stream ended without its usage chunk and [DONE]")
        ttft = (first - t0) * 1e3 if first is not None else None
        tpot = (last - first) / (tokens - 1) * 1e3 if first is not None and tokens > 1 and last > first else None
        return ttft, tpot, tokens

    def batch(self, prompts: list[list[int]], max_tokens: int, phase: str) -> Batch:
        """All prompts sent at once (one connection each), timed until the last one ends."""
        t0 = time.perf_counter()
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            outs = list(pool.map(lambda p: self.stream(p, max_tokens), prompts))
        wall = time.perf_counter() - t0
        b = Batch(len(prompts), phase, wall, sum(n for _, _, n in outs))
        b.ttft_ms = [t for t, _, _ in outs if t is not None]
        b.tpot_ms = [t for _, t, _ in outs if t is not None]
        return b

    def prompt_logprobs(self, prompts: list[list[int]], one_per_step: bool = False) -> list[dict]:
        """Teacher-forced, as bench_engine.prompt_logprobs: vLLM's `prompt_logprobs` extension of the
        completions API. one_per_step: one request at a time, so one engine step runs each prompt alone."""
        def one(p: list[int]) -> dict:
            out = self._call("POST", "/v1/completions", {"model": self.model, "prompt": p, "max_tokens": 1,
                                                         "temperature": 0.0, "prompt_logprobs": 1})
            return logprob_row(p, out["choices"][0].get("prompt_logprobs"))

        if one_per_step:
            return [one(p) for p in prompts]
        with ThreadPoolExecutor(max_workers=len(prompts)) as pool:
            return list(pool.map(one, prompts))


def logprob_row(prompt: list[int], positions: list[dict | None] | None) -> dict:
    """{"top1", "actual_logprob"} from the API's per-position {token id (a JSON string): {"logprob"}}."""
    if positions is None:
        raise ServerError("the server returned no prompt_logprobs (is it vLLM's OpenAI server?)")
    top1, actual = [], []
    for pos, lp in enumerate(positions):
        if lp is None:  # the first position has no prediction
            continue
        by_id = {int(k): float(v["logprob"]) for k, v in lp.items()}
        top1.append(max(by_id, key=by_id.get))
        actual.append(by_id.get(prompt[pos]))
    return {"top1": top1, "actual_logprob": actual}

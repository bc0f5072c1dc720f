"""A fake OpenAI-compatible judge: a real HTTP server on 127.0.0.1 that speaks `/v1/chat/completions`.

It grades the way a careful judge would on the prompts `diagnosis_zero.judge` writes: 2 when a
predicted diagnosis equals (case-insensitively) one of the score-2 names, 1 when it equals one of
the score-1 names (or, under RareArena's original prompt, contains the word "disorder"), else 0.
It reads both kinds of prompt: the per-item one (one diagnosis, answered with one digit) and
RareArena's (the whole numbered answer, answered "1. NAME: score N;" per line, as GPT-4o does).

Faults are injected per request, optionally only for one predicted diagnosis:
`500` (server error), `429` (rate limited, with `Retry-After`), `timeout` (answers after `delay`
seconds), `garbage` (a 200 whose text is not a score), `drop` (headers and half a body, then the
connection closes). Every request is logged with its arrival time and body, so tests can count
what was sent and compare it byte for byte. For a RareArena prompt the "prediction" a fault
matches and the log records is the whole (stripped) answer text.

Used in-process by the tests (`JudgeServer().start()`) and as a subprocess by
`benchmarks/bench_judge.py` (`python tests/judge_server.py --latency 0.05`, prints `PORT n`).
"""

from __future__ import annotations

import argparse
import ast
import contextlib
import json
import re
import threading
import time
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FAULT_KINDS = ("500", "429", "timeout", "garbage", "drop")


@dataclass
class Fault:
    kind: str
    match: str | None = None  # only requests judging this predicted diagnosis; None = any request
    times: int = 1  # requests it hits; -1 = forever
    retry_after: str | None = None  # value of the Retry-After header of a 429
    delay: float = 2.0  # seconds a `timeout` request waits before answering


@dataclass
class Request:
    time: float
    prediction: str | None
    status: int
    fault: str | None
    authorization: str | None
    body: dict | None = None


def _field(text: str, label: str) -> str | None:
    found = re.search(rf"^{re.escape(label)}[^:\n]*:\s*(.*)$", text, re.MULTILINE)
    return found.group(1).strip() if found else None


def _names(value: str | None) -> set[str]:
    if not value or value.strip().lower() == "(none)":
        return set()
    return {name.strip().lower() for name in value.split(" | ") if name.strip()}


_ORIGINAL = re.compile("Here is the student\u2019s answer: \n(.*)\n\nHere is the reference diagnosis: \n(.*)"
                       "\n\nOutput Format:", re.DOTALL)
_UPDATED = re.compile(r"- Score 2 Set: (.*?)\n(?:- Score 1 Set: (.*?)\n)?\n\*\*Student's Answer:\*\*\n(.*)"
                      r"\n\n\*\*Output Format:\*\*", re.DOTALL)
_ITEM = re.compile(r"^\s*\d+\s*[.)]\s*|;\s*$")


def grade_answer(answer: str, exact: set[str], broader: set[str], original: bool) -> str:
    """Return a RareArena-style reply grading each line of a numbered answer."""
    lines = []
    for number, item in enumerate((i for i in (_ITEM.sub("", line).strip() for line in answer.splitlines()) if i), 1):
        name = item.lower()
        score = 2 if name in exact else 1 if name in broader or (original and "disorder" in name.split()) else 0
        lines.append(f"{number}. {item}: score {score};")
    return "\n".join(lines)


def grade(prompt: str) -> tuple[str | None, str]:
    """Return (predicted diagnosis or answer, what a careful judge would answer) for a judge prompt."""
    if found := _ORIGINAL.search(prompt):
        return found.group(1).strip(), grade_answer(found.group(1), {found.group(2).strip().lower()}, set(), True)
    if found := _UPDATED.search(prompt):
        exact = {n.lower() for n in ast.literal_eval(found.group(1))}
        broader = {n.lower() for n in ast.literal_eval(found.group(2) or "[]")}
        return found.group(3).strip(), grade_answer(found.group(3), exact, broader, False)
    prediction = _field(prompt, "Predicted diagnosis")
    exact = _names(_field(prompt, "Score-2 names") or _field(prompt, "Reference diagnosis"))
    broader = _names(_field(prompt, "Score-1 names"))
    if prediction is None:
        return None, "0"
    name = prediction.lower()
    if name in exact:
        return prediction, "2"
    if name in broader or ("Score-1 names" not in prompt and "disorder" in name.split()):
        return prediction, "1"
    return prediction, "0"


class JudgeServer:
    """A threaded fake judge. `start()` returns self; `base_url` is ready for the OpenAI client."""

    def __init__(self, latency: float = 0.0, port: int = 0, api_key: str | None = None):
        self.latency = latency
        self.api_key = api_key  # when set, requests without `Bearer <api_key>` get a 401
        self.requests: list[Request] = []
        self.faults: list[Fault] = []
        self.answer_override: dict[str, str] = {}  # prediction -> exact reply text
        self._lock = threading.Lock()
        self._httpd = ThreadingHTTPServer(("127.0.0.1", port), _make_handler(self))
        self._httpd.daemon_threads = True
        self._httpd.request_queue_size = 256
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return self._httpd.server_address[1]

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def start(self) -> JudgeServer:
        self._thread = threading.Thread(target=self._httpd.serve_forever, args=(0.05,), daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()

    def add_fault(self, kind: str, match: str | None = None, times: int = 1, **options) -> None:
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r}; one of {FAULT_KINDS}")
        with self._lock:
            self.faults.append(Fault(kind, match, times, **options))

    def count(self, prediction: str | None = None, status: int | None = None) -> int:
        with self._lock:
            return sum(1 for r in self.requests
                       if (prediction is None or r.prediction == prediction)
                       and (status is None or r.status == status))

    def predictions(self, status: int | None = 200) -> list[str]:
        with self._lock:
            return [r.prediction for r in self.requests if status is None or r.status == status]

    def reset_log(self) -> None:
        with self._lock:
            self.requests.clear()

    def _take_fault(self, prediction: str | None) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times != 0 and (fault.match is None or fault.match == prediction):
                    if fault.times > 0:
                        fault.times -= 1
                    return fault
        return None

    def _log(self, prediction, status, fault, authorization, body=None) -> None:
        with self._lock:
            self.requests.append(Request(time.monotonic(), prediction, status, fault, authorization, body))

    def stats(self) -> dict:
        with self._lock:
            return {"requests": len(self.requests),
                    "ok": sum(1 for r in self.requests if r.status == 200)}


def _make_handler(server: JudgeServer):
    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"  # keep-alive, as real endpoints do
        disable_nagle_algorithm = True  # headers and body go out in two writes: no 40 ms delayed-ACK stall

        def log_message(self, format, *args):  # quiet: tests read the request log instead
            pass

        def _send_json(self, status: int, payload: dict, headers: dict | None = None) -> None:
            body = json.dumps(payload).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            for name, value in (headers or {}).items():
                self.send_header(name, value)
            self.end_headers()
            self.wfile.write(body)

        def do_GET(self):
            if self.path.rstrip("/").endswith("/stats"):
                self._send_json(200, server.stats())
            else:
                self._send_json(404, {"error": {"message": "not found"}})

        def do_POST(self):
            length = int(self.headers.get("Content-Length") or 0)
            body = json.loads(self.rfile.read(length) or b"{}")
            authorization = self.headers.get("Authorization")
            if not self.path.rstrip("/").endswith("/chat/completions"):
                self._send_json(404, {"error": {"message": "not found"}})
                return
            prompt = "\n".join(str(m.get("content", "")) for m in body.get("messages", []))
            prediction, digit = grade(prompt)
            if server.api_key is not None and authorization != f"Bearer {server.api_key}":
                server._log(prediction, 401, None, authorization, body)
                self._send_json(401, {"error": {"message": "invalid api key", "type": "invalid_request_error"}})
                return
            fault = server._take_fault(prediction)
            if server.latency:
                time.sleep(server.latency)
            kind = fault.kind if fault else None
            if kind == "500":
                server._log(prediction, 500, kind, authorization, body)
                self._send_json(500, {"error": {"message": "internal error", "type": "server_error"}})
                return
            if kind == "429":
                server._log(prediction, 429, kind, authorization, body)
                headers = {"Retry-After": fault.retry_after} if fault.retry_after is not None else {}
                self._send_json(429, {"error": {"message": "rate limited", "type": "rate_limit"}}, headers)
                return
            if kind == "drop":
                server._log(prediction, 0, kind, authorization, body)
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", "400")
                self.end_headers()
                self.wfile.write(b'{"id": "chatcmpl-dropped", "object": "chat.comp')
                self.wfile.flush()
                self.close_connection = True
                return
            if kind == "timeout":
                server._log(prediction, 0, kind, authorization, body)
                time.sleep(fault.delay)
                self.close_connection = True
                return
            text = "I cannot grade this, sorry." if kind == "garbage" else digit
            text = server.answer_override.get(prediction, text)
            server._log(prediction, 200, kind, authorization, body)
            self._send_json(200, {
                "id": "chatcmpl-fake",
                "object": "chat.completion",
                "created": int(time.time()),
                "model": body.get("model", "fake-judge"),
                "choices": [{"index": 0, "finish_reason": "stop",
                             "message": {"role": "assistant", "content": text}}],
                "usage": {"prompt_tokens": max(1, len(prompt) // 4), "completion_tokens": 1,
                          "total_tokens": max(1, len(prompt) // 4) + 1},
            })

    return Handler


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--port", type=int, default=0)
    parser.add_argument("--latency", type=float, default=0.0, help="seconds before each answer")
    args = parser.parse_args()
    server = JudgeServer(latency=args.latency, port=args.port)
    print(f"PORT {server.port}", flush=True)
    with contextlib.suppress(KeyboardInterrupt):
        server._httpd.serve_forever()


if __name__ == "__main__":
    main()

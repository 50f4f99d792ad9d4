#!/usr/bin/env python3
"""An OpenAI-shaped upstream that parses JSON the way vLLM's Python stack does (json.loads:
names matched exactly, the last duplicate wins) and answers with what it understood, as the
assistant's content. Usage: echo_upstream.py [HOST [PORT]]; prints its port on stdout once
listening. Test use only (also copied into cmd/strongroom/testdata/hostile.txt)."""
import json
import sys
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

FIELDS = ["model", "messages", "prompt", "input", "logit_bias", "logprobs", "top_logprobs",
          "prompt_logprobs", "n", "best_of", "max_tokens", "max_completion_tokens", "stream"]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"

    def log_message(self, *args):
        pass

    def do_GET(self):
        self.reply({"object": "list", "data": []})

    def do_POST(self):
        body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
        req = json.loads(body)
        seen = {k: req[k] for k in FIELDS if k in req}
        seen["x_strongroom_tenant"] = self.headers.get("X-Strongroom-Tenant")
        self.reply({"id": "echo", "object": "chat.completion", "model": req.get("model"),
                    "choices": [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant", "content": json.dumps(seen)}}],
                    "usage": {"prompt_tokens": 1, "completion_tokens": 1, "total_tokens": 2}})

    def reply(self, obj):
        b = json.dumps(obj).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(b)))
        self.end_headers()
        self.wfile.write(b)


srv = ThreadingHTTPServer((sys.argv[1] if len(sys.argv) > 1 else "127.0.0.1", int(sys.argv[2]) if len(sys.argv) > 2 else 0), Handler)
print(srv.server_address[1], flush=True)
srv.serve_forever()

"""Unit tests of the add-on's REST client against a small local HTTP server:
retries after 429, JSON errors, Server-Sent Events, verified downloads."""

import hashlib
import http.server
import json
import os
import sys
import tempfile
import threading
import unittest

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from kiln_blender.farm_rest import FarmClient, FarmError, parse_sse  # noqa: E402

FRAME = b"png bytes"


class Handler(http.server.BaseHTTPRequestHandler):
    busy_left = 0

    def log_message(self, *args):
        pass

    def reply(self, status, body, headers=()):
        data = body if isinstance(body, bytes) else json.dumps(body).encode()
        self.send_response(status)
        for key, value in headers:
            self.send_header(key, value)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.headers.get("Authorization") != "Bearer secret":
            return self.reply(401, {"error": {"code": "unauthenticated", "message": "bad token"}})
        if self.path.endswith("/stat"):
            if Handler.busy_left > 0:
                Handler.busy_left -= 1
                return self.reply(429, {"error": {"code": "resource_exhausted", "message": "slow down"}},
                                  [("Retry-After", "0.1")])
            return self.reply(200, {"exists": self.path.startswith("/v1/assets/aa")})
        if self.path == "/v1/jobs/j/outputs/frames/f%201.png":
            return self.reply(200, FRAME)
        return self.reply(404, {"error": {"code": "not_found", "message": "no such job"}})


class FarmRestTests(unittest.TestCase):
    @classmethod
    def setUpClass(cls):
        cls.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=cls.server.serve_forever, daemon=True).start()
        cls.url = f"http://127.0.0.1:{cls.server.server_address[1]}"

    @classmethod
    def tearDownClass(cls):
        cls.server.shutdown()

    def test_find_missing_retries_when_busy_and_skips_repeats(self):
        Handler.busy_left = 2
        client = FarmClient(self.url, "secret")
        self.assertEqual(client.find_missing(["aa1", "bb2", "bb2"]), ["bb2"])

    def test_errors_carry_the_farms_code_and_a_hint(self):
        with self.assertRaises(FarmError) as caught:
            FarmClient(self.url, "wrong").stored("aa")
        self.assertEqual(caught.exception.code, "unauthenticated")
        self.assertIn("token", str(caught.exception))
        with self.assertRaises(FarmError) as caught:
            FarmClient(self.url, "secret").job("nope")
        self.assertEqual((caught.exception.status, caught.exception.code), (404, "not_found"))

    def test_bad_settings_are_refused_before_any_call(self):
        with self.assertRaises(FarmError):
            FarmClient("farm:7080", "secret")
        with self.assertRaises(FarmError):
            FarmClient(self.url, " ")

    def test_unreachable_farm(self):
        with self.assertRaises(FarmError) as caught:
            FarmClient("http://127.0.0.1:9", "secret").stored("aa")
        self.assertEqual(caught.exception.code, "unreachable")

    def test_downloads_are_verified(self):
        client = FarmClient(self.url, "secret")
        with tempfile.TemporaryDirectory() as folder:
            dest = os.path.join(folder, "frames", "f 1.png")
            good = {"path": "frames/f 1.png", "digest": hashlib.sha256(FRAME).hexdigest()}
            client.download_output("j", good, dest)
            with open(dest, "rb") as file:
                self.assertEqual(file.read(), FRAME)
            with self.assertRaises(FarmError):
                client.download_output("j", dict(good, digest="0" * 64), dest + "2")
            self.assertFalse(os.path.exists(dest + "2") or os.path.exists(dest + "2.part"))

    def test_sse_parsing(self):
        stream = [b": keep-alive\n", b"\n", b"event: job_changed\n", b'data: {"jobChanged": {}}\n', b"\n",
                  b"id: 3\n", b"event: task_progress\n", b"data: {\"taskProgress\":\n", b"data: {}}\n", b"\n"]
        events = list(parse_sse(stream))
        self.assertEqual([(e.kind, e.id) for e in events], [("job_changed", None), ("task_progress", "3")])
        self.assertEqual(events[1].data, {"taskProgress": {}})


if __name__ == "__main__":
    unittest.main()

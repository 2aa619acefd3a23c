"""A record system's MLLP receiver built on PyPI hl7apy's MLLPServer (a peer nobody here
wrote). It answers AA to every message, writes each one to OUT_DIR, and, like every
hl7apy server, closes the connection after each message.

usage: mllp_receiver.py PORT OUT_DIR   (prints "listening PORT" once bound)
"""
import os
import sys
import threading

from hl7apy.mllp import AbstractHandler, MLLPServer

PORT, OUT = int(sys.argv[1]), sys.argv[2]
lock = threading.Lock()
count = [0]


class Ack(AbstractHandler):
    def reply(self):
        msg = self.incoming_message
        msh = msg.split("\r", 1)[0].split("|")
        field = lambda n: msh[n - 1] if len(msh) >= n else ""  # noqa: E731 (MSH-n, n >= 2)
        with lock:
            count[0] += 1
            with open(os.path.join(OUT, "%06d.hl7" % count[0]), "w", encoding="utf-8") as f:
                f.write(msg)
        ack = "MSH|^~\\&|%s|%s|%s|%s|20250101||ACK^%s^ACK|PY%d|P|%s\rMSA|AA|%s\r" % (
            field(5), field(6), field(3), field(4),
            field(9).split("^")[1] if "^" in field(9) else "",
            count[0], field(12), field(10),
        )
        return "\x0b" + ack + "\x1c\r"


class AnyType(dict):
    def __missing__(self, key):
        return (Ack,)


server = MLLPServer("127.0.0.1", PORT, AnyType(), timeout=10)
print("listening", server.server_address[1], flush=True)
server.serve_forever()

"""Reads HL7 v2 files with PyPI `hl7` (an independent reader) and prints, as one JSON
document, each file's parse tree (nested lists of strings) or its error.

usage: dump_hl7.py FILE...
"""
import json
import sys

import hl7


def tree(node):
    if isinstance(node, str):
        return node
    return [tree(child) for child in node]


out = []
for path in sys.argv[1:]:
    with open(path, "rb") as f:
        raw = f.read()
    if raw.startswith(b"\xef\xbb\xbf"):
        raw = raw[3:]
    text = raw.decode("utf-8")
    # python-hl7 splits segments on \r only.
    lines = [l for l in text.replace("\r\n", "\r").replace("\n", "\r").split("\r") if l]
    try:
        out.append({"file": path, "tree": tree(hl7.parse("\r".join(lines)))})
    except Exception as e:  # noqa: BLE001 (the oracle's failure is data)
        out.append({"file": path, "error": "%s: %s" % (type(e).__name__, e)})
json.dump(out, sys.stdout)

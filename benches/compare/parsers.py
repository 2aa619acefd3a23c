"""The PyPI HL7 parsers on the messages `compare --write DIR` wrote (benches/compare/run.sh).

  parsers.py --filter DIR            removes the messages `hl7` or `hl7apy` cannot parse
  parsers.py --dir DIR [--secs S]    times each over every *.hl7 for S seconds (3),
                                     one JSON line per parser

`hl7` (0.4.5): hl7.parse, which builds every field, repetition and component.
`hl7apy` (1.3.5): parse_message, tolerant, without group finding (its quickest).
"""

import json
import os
import sys
import time

import hl7
from hl7apy.consts import VALIDATION_LEVEL
from hl7apy.parser import parse_message


def read(d):
    out = []
    for name in sorted(os.listdir(d)):
        if name.endswith(".hl7"):
            with open(os.path.join(d, name), "rb") as f:
                out.append((name, f.read().decode("utf-8", "replace")))
    return out


def with_hl7(text):
    return len(hl7.parse(text))


def with_hl7apy(text):
    m = parse_message(text, validation_level=VALIDATION_LEVEL.TOLERANT, find_groups=False)
    return len(m.children)


READERS = [("python_hl7", with_hl7), ("python_hl7apy", with_hl7apy)]


def main():
    args = sys.argv[1:]
    secs = float(args[args.index("--secs") + 1]) if "--secs" in args else 3.0
    if "--filter" in args:
        d = args[args.index("--filter") + 1]
        msgs = read(d)
        dropped = 0
        for name, text in msgs:
            for _, f in READERS:
                try:
                    f(text)
                except Exception:
                    os.remove(os.path.join(d, name))
                    dropped += 1
                    break
        print(f"parsers.py: {len(msgs) - dropped} of {len(msgs)} messages taken by hl7 and hl7apy",
              file=sys.stderr)
        return
    d = args[args.index("--dir") + 1]
    msgs = [t for _, t in read(d)]
    size = sum(len(t.encode("utf-8")) for t in msgs)
    for reader, f in READERS:
        start = time.perf_counter()
        rounds = 0
        while rounds == 0 or time.perf_counter() - start < secs:
            for t in msgs:
                f(t)
            rounds += 1
        s = time.perf_counter() - start
        print(json.dumps({
            "reader": reader,
            "messages": len(msgs),
            "per_second": round(rounds * len(msgs) / s),
            "mb_per_second": round(rounds * size / s / 1e6, 2),
        }))


if __name__ == "__main__":
    main()

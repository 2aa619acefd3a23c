"""Validates HL7 v2 ACK files with hl7apy (strict): exits 1 naming the first invalid file."""
import sys

from hl7apy.parser import parse_message
from hl7apy.consts import VALIDATION_LEVEL

for path in sys.argv[1:]:
    with open(path, "rb") as f:
        text = f.read().decode("utf-8").replace("\n", "\r").strip("\r")
    try:
        msg = parse_message(text, validation_level=VALIDATION_LEVEL.STRICT, find_groups=False)
        msg.validate()
    except Exception as e:  # hl7apy raises several exception types
        print(f"{path}: {type(e).__name__}: {e}")
        sys.exit(1)
print(f"{len(sys.argv) - 1} ACK(s) valid")

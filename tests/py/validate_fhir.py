"""Validates FHIR R4 JSON files with PyPI fhir.resources 6.4.0 (FHIR 4.0.1, pydantic models of
every resource and data type: required elements, cardinalities, primitive formats, choice
types, resource types inside Bundle entries).

Prints one JSON line per file: {"file", "ok", "counts": {resourceType: n}} or {"file", "ok":
false, "error"}. Exit status 0 even when a file is invalid: the caller decides.
"""
import json
import sys

from fhir.resources import construct_fhir_element

for path in sys.argv[1:]:
    with open(path, "rb") as f:
        data = json.loads(f.read())
    try:
        res = construct_fhir_element(data["resourceType"], data)
    except Exception as e:  # pydantic.ValidationError, LookupError, KeyError
        print(json.dumps({"file": path, "ok": False, "error": str(e)[:4000]}))
        continue
    counts = {}
    if data["resourceType"] == "Bundle":
        for entry in res.entry or []:
            t = entry.resource.resource_type
            counts[t] = counts.get(t, 0) + 1
    print(json.dumps({"file": path, "ok": True, "counts": counts}))

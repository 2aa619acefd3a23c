"""A stand-in for the DMP's IHE MHD Document Recipient (ITI-65), for tests only.

HTTPS with a client certificate required (the CA given); every POST body is validated as a
FHIR R4 Bundle by PyPI fhir.resources (6.4.0, FHIR 4.0.1), and what it holds is recorded as
one JSON line in --out: the client certificate's SAN URIs, the resource types, the
DocumentReferences' security labels and profiles. A valid transaction carrying a List, a
DocumentReference and a Binary is answered 200 with a transaction-response Bundle (201 per
entry, as ITI-65 says); anything else 400 with an OperationOutcome.

fhir.resources types `url` as pydantic's AnyUrl, which refuses `urn:uuid:` values, while
ITI-65 (IHE MHD 4.2, 2:3.65.4.1.2.1) has DocumentReference.content.attachment.url name the
Binary's fullUrl, a `urn:uuid:` in a transaction, and the HL7 validator accepts it. So this
receiver first checks that every attachment.url is the fullUrl of a Binary entry of the
Bundle (a stricter check than the validator's), then validates with those urls rewritten
to `/Binary/<n>`, the relative form fhir.resources takes.

Prints "PORT <n>" once listening on 127.0.0.1.
"""
import argparse
import http.server
import json
import ssl
import sys

from fhir.resources.bundle import Bundle


def describe(bundle):
    types = [e.resource.resource_type for e in bundle.entry or []]
    labels, profiles, formats = [], [], []
    for e in bundle.entry or []:
        r = e.resource
        profiles.extend(r.meta.profile if r.meta and r.meta.profile else [])
        if r.resource_type == "DocumentReference":
            for cc in r.securityLabel or []:
                labels.extend(c.code for c in cc.coding or [])
            for c in r.content or []:
                formats.append(c.attachment.contentType)
    return types, labels, profiles, formats


def check_binary_links(doc):
    """Every attachment.url names a Binary entry's fullUrl; rewritten for the validator."""
    binaries = {e.get("fullUrl"): i for i, e in enumerate(doc.get("entry", []))
                if e.get("resource", {}).get("resourceType") == "Binary"}
    for e in doc.get("entry", []):
        r = e.get("resource", {})
        if r.get("resourceType") != "DocumentReference":
            continue
        for c in r.get("content", []):
            url = c.get("attachment", {}).get("url")
            if url not in binaries:
                raise ValueError(f"attachment.url {url!r} is not a Binary entry's fullUrl")
            c["attachment"]["url"] = f"/Binary/{binaries[url]}"
    return doc


class Handler(http.server.BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def answer(self, status, body):
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/fhir+json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_POST(self):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        cert = self.connection.getpeercert() or {}
        client = [v for (k, v) in cert.get("subjectAltName", ()) if k == "URI"]
        record = {"client": client, "path": self.path,
                  "content_type": self.headers.get("Content-Type")}
        try:
            bundle = Bundle.parse_obj(check_binary_links(json.loads(body)))
            types, labels, profiles, formats = describe(bundle)
            missing = [t for t in ("List", "DocumentReference", "Binary") if t not in types]
            if bundle.type != "transaction" or missing:
                raise ValueError(f"not an ITI-65 transaction: type {bundle.type}, missing {missing}")
            record.update(ok=True, types=types, labels=labels, profiles=profiles,
                          formats=formats)
            status = 200
            answer = {"resourceType": "Bundle", "type": "transaction-response",
                      "entry": [{"response": {"status": "201 Created",
                                              "location": f"{t}/{i + 1}"}}
                                for i, t in enumerate(types)]}
        except Exception as e:  # noqa: BLE001 - every failure is recorded and answered
            record.update(ok=False, error=str(e)[:2000])
            status = 400
            answer = {"resourceType": "OperationOutcome",
                      "issue": [{"severity": "error", "code": "invalid"}]}
        with open(self.server.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.answer(status, answer)


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--ca", required=True)
    p.add_argument("--cert", required=True)
    p.add_argument("--key", required=True)
    p.add_argument("--out", required=True)
    a = p.parse_args()
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.load_cert_chain(a.cert, a.key)
    ctx.load_verify_locations(a.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    server.out = a.out
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    print(f"PORT {server.server_address[1]}", flush=True)
    server.serve_forever()


if __name__ == "__main__":
    sys.exit(main())

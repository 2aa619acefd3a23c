"""A stand-in for the DMP's IHE MHD Document Recipient (ITI-65), for tests only.

HTTPS with a client certificate required (the CA given); every POST body is validated as a
FHIR R4 Bundle by PyPI fhir.resources (6.4.0, FHIR 4.0.1), and what it holds is recorded as
one JSON line in --out: the client certificate's SAN URIs, the resource types, the
DocumentReferences' security labels and profiles. A valid transaction carrying a List, a
DocumentReference and a Binary is answered 200 with a transaction-response Bundle (201 per
entry, as ITI-65 says, with locations); anything else 400 with an OperationOutcome.

Like a Document Recipient, it keeps the DocumentReferences it accepted (in memory): one with
`relatesTo` `replaces` must name (by `reference`, else by identifier) one it holds and that is
current, which becomes `superseded`. A PDSm deletion (flux 03: conditional PATCH
`DocumentReference?identifier=system|value` with a FHIRPath Patch `Parameters`, validated by
fhir.resources) must set the status to `superseded` and add `pdsm-ext-is-deleted` = true: the
DocumentReference is then deleted (404 for any later request naming it, as PDSm says).

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
import itertools
import json
import ssl
import sys
import threading
import urllib.parse

from fhir.resources.bundle import Bundle
from fhir.resources.parameters import Parameters

RFC3986 = "urn:ietf:rfc:3986"
IS_DELETED = "https://interop.esante.gouv.fr/ig/fhir/pdsm/StructureDefinition/pdsm-ext-is-deleted"

LOCK = threading.Lock()
# id -> {"master": str, "status": str, "deleted": bool}
DOCS = {}
IDS = itertools.count(1)


def find(reference=None, master=None):
    with LOCK:
        if reference and reference.startswith("DocumentReference/"):
            return reference.split("/")[1] if reference.split("/")[1] in DOCS else None
        for i, d in DOCS.items():
            if master is not None and d["master"] == master:
                return i
    return None


def replacements(doc):
    """The DocumentReferences this Bundle replaces: ids held and current, else ValueError."""
    out = []
    for e in doc.get("entry", []):
        r = e.get("resource", {})
        for rel in r.get("relatesTo", []) if r.get("resourceType") == "DocumentReference" else []:
            if rel.get("code") != "replaces":
                continue
            t = rel.get("target", {})
            ident = t.get("identifier", {})
            master = ident.get("value") if ident.get("system") == RFC3986 else None
            i = find(t.get("reference"), master)
            if i is None or DOCS[i]["deleted"] or DOCS[i]["status"] != "current":
                raise ValueError(f"relatesTo names no current DocumentReference: {t}")
            out.append(i)
    return out


def masters(doc):
    return [e["resource"].get("masterIdentifier", {}).get("value")
            for e in doc.get("entry", [])
            if e.get("resource", {}).get("resourceType") == "DocumentReference"]


def deletion_ops(params):
    """(status replaced by superseded, is-deleted added as true) from a FHIRPath Patch."""
    status, deleted = False, False
    for p in params.get("parameter", []):
        parts = {x["name"]: x for x in p.get("part", [])}
        kind = parts.get("type", {}).get("valueCode")
        path = parts.get("path", {}).get("valueString")
        value = parts.get("value", {})
        if kind == "replace" and path == "DocumentReference.status":
            status = value.get("valueCode") == "superseded"
        if kind in ("add", "replace") and path == "DocumentReference" \
                and parts.get("name", {}).get("valueString") == "extension":
            sub = {x["name"]: x for x in value.get("part", [])}
            deleted = sub.get("url", {}).get("valueUri") == IS_DELETED \
                and sub.get("value", {}).get("valueBoolean") is True
    return status, deleted


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

    def start(self, kind):
        length = int(self.headers.get("Content-Length", "0"))
        body = self.rfile.read(length)
        cert = self.connection.getpeercert() or {}
        client = [v for (k, v) in cert.get("subjectAltName", ()) if k == "URI"]
        url = urllib.parse.urlsplit(self.path)
        record = {"kind": kind, "client": client, "path": url.path,
                  "content_type": self.headers.get("Content-Type")}
        return body, url, record

    def finish(self, record, status, answer):
        with open(self.server.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")
        self.answer(status, answer)

    def do_POST(self):
        body, _, record = self.start("provide")
        try:
            doc = json.loads(body)
            replaced = replacements(doc)
            bundle = Bundle.parse_obj(check_binary_links(doc))
            types, labels, profiles, formats = describe(bundle)
            missing = [t for t in ("List", "DocumentReference", "Binary") if t not in types]
            if bundle.type != "transaction" or missing:
                raise ValueError(f"not an ITI-65 transaction: type {bundle.type}, missing {missing}")
            locations = []
            with LOCK:
                for i in replaced:
                    DOCS[i]["status"] = "superseded"
                dr = iter(masters(doc))
                for t in types:
                    n = str(next(IDS))
                    if t == "DocumentReference":
                        DOCS[n] = {"master": next(dr), "status": "current", "deleted": False}
                        locations.append(f"{t}/{n}/_history/1")
                    else:
                        locations.append(f"{t}/{n}")
            record.update(ok=True, types=types, labels=labels, profiles=profiles,
                          formats=formats, masters=masters(doc),
                          replaced=[f"DocumentReference/{i}" for i in replaced])
            status = 200
            answer = {"resourceType": "Bundle", "type": "transaction-response",
                      "entry": [{"response": {"status": "201 Created", "location": loc}}
                                for loc in locations]}
        except Exception as e:  # noqa: BLE001 - every failure is recorded and answered
            record.update(ok=False, error=str(e)[:2000])
            status = 400
            answer = {"resourceType": "OperationOutcome",
                      "issue": [{"severity": "error", "code": "invalid"}]}
        self.finish(record, status, answer)

    def do_PATCH(self):
        body, url, record = self.start("patch")
        try:
            if self.headers.get("Content-Type") != "application/fhir+json":
                raise ValueError("a FHIRPath Patch is application/fhir+json")
            params = json.loads(body)
            Parameters.parse_obj(params)
            query = urllib.parse.parse_qs(url.query)
            system, _, value = query.get("identifier", [""])[0].partition("|")
            record.update(master=value)
            if url.path.rsplit("/", 1)[-1] != "DocumentReference" or system != RFC3986:
                raise ValueError(f"not a conditional PATCH by identifier: {self.path}")
            if deletion_ops(params) != (True, True):
                raise ValueError("not a PDSm deletion (status superseded, is-deleted true)")
        except Exception as e:  # noqa: BLE001 - every failure is recorded and answered
            record.update(ok=False, error=str(e)[:2000])
            self.finish(record, 400, {"resourceType": "OperationOutcome",
                                      "issue": [{"severity": "error", "code": "invalid"}]})
            return
        i = find(master=value)
        with LOCK:
            if i is None or DOCS[i]["deleted"]:
                record.update(ok=False, error="no such DocumentReference")
                status, answer = 404, {"resourceType": "OperationOutcome",
                                       "issue": [{"severity": "error", "code": "not-found"}]}
            else:
                DOCS[i].update(status="superseded", deleted=True)
                record.update(ok=True, deleted=f"DocumentReference/{i}")
                status, answer = 200, {"resourceType": "DocumentReference", "id": i,
                                       "status": "superseded"}
        self.finish(record, status, answer)


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

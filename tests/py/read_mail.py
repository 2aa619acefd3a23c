"""Reads an e-mail as an MSSanté recipient would, for tests only: Python's `email` package
(policy.default) and `zipfile`, nothing of ours.

usage: read_mail.py MESSAGE.eml [--cda-from-hl7 FILE]

Prints one JSON object: subject, from, to (addresses), message_id,
disposition_notification_to (or null), content_type, body_text (the text/plain body,
decoded, or null), attachments [{filename, content_type, size}], and xdm: null without an
IHE_XDM.ZIP attachment (name matched case-insensitively), else
  {"names": sorted namelist, "has_index": INDEX.HTM at the root, "has_readme": README.TXT
   at the root, "metadata_ok": IHE_XDM/SUBSET01/METADATA.XML parses and is an lcm:3.0
   SubmitObjectsRequest, "documents": [{"name", "sha256", "uri_in_metadata"}] for every
   other file under IHE_XDM/SUBSET01/ (uri_in_metadata: its path relative to SUBSET01 is
   the value of an ExtrinsicObject's URI Slot), "metadata_patient_id": the value of the
   ExtrinsicObject's XDSDocumentEntry.patientId ExternalIdentifier, or null}.

--cda-from-hl7 FILE adds "hl7_cda_sha256": the SHA-256 of the base64 OBX-5.5 of the first
OBX of value type ED whose OBX-3.3 is not MetaDMPMSS (null if none), to compare with the
XDM document's.
"""
import argparse
import base64
import email
import email.policy
import hashlib
import io
import json
import re
import sys
import xml.etree.ElementTree as ET
import zipfile

LCM = "urn:oasis:names:tc:ebxml-regrep:xsd:lcm:3.0"
RIM = "{urn:oasis:names:tc:ebxml-regrep:xsd:rim:3.0}"
PATIENT_ID = "urn:uuid:58a6f841-87b3-4a3e-92fd-a8ffeff98427"
SUBSET = "IHE_XDM/SUBSET01/"
METADATA = SUBSET + "METADATA.XML"


def read_metadata(z):
    """(ok, URI slot values, patient id) of METADATA.XML."""
    try:
        root = ET.fromstring(z.read(METADATA))
    except (KeyError, ET.ParseError):
        return False, set(), None
    uris, patient = set(), None
    for eo in root.iter(RIM + "ExtrinsicObject"):
        for slot in eo.iter(RIM + "Slot"):
            if slot.get("name") == "URI":
                uris.update(v.text for v in slot.iter(RIM + "Value"))
        for ei in eo.iter(RIM + "ExternalIdentifier"):
            if ei.get("identificationScheme") == PATIENT_ID and patient is None:
                patient = ei.get("value")
    return root.tag == "{%s}SubmitObjectsRequest" % LCM, uris, patient


def read_xdm(data):
    z = zipfile.ZipFile(io.BytesIO(data))
    names = sorted(z.namelist())
    ok, uris, patient = read_metadata(z)
    documents = [{"name": n, "sha256": hashlib.sha256(z.read(n)).hexdigest(),
                  "uri_in_metadata": n[len(SUBSET):] in uris}
                 for n in names
                 if n.startswith(SUBSET) and n != METADATA and not n.endswith("/")]
    return {"names": names, "has_index": "INDEX.HTM" in names,
            "has_readme": "README.TXT" in names, "metadata_ok": ok,
            "documents": documents, "metadata_patient_id": patient}


def cda_from_hl7(path):
    with open(path, "rb") as f:
        text = f.read().decode("utf-8", errors="replace")
    for seg in re.split(r"[\r\n]+", text):
        fields = seg.split("|")
        if fields[0] != "OBX" or len(fields) < 6 or fields[2] != "ED":
            continue
        obx3 = fields[3].split("^")
        if len(obx3) > 2 and obx3[2] == "MetaDMPMSS":
            continue
        obx5 = fields[5].split("^")
        if len(obx5) <= 4:
            return None
        # Some ANS examples carry an excerpt of the document whose base64 lacks its padding:
        # decoded as far as it goes, as a lenient HL7 reader does.
        data = re.sub(r"\s", "", obx5[4])
        return hashlib.sha256(base64.b64decode(data + "=" * (-len(data) % 4))).hexdigest()
    return None


def main():
    p = argparse.ArgumentParser()
    p.add_argument("eml")
    p.add_argument("--cda-from-hl7", metavar="FILE")
    a = p.parse_args()
    with open(a.eml, "rb") as f:
        msg = email.message_from_binary_file(f, policy=email.policy.default)
    body = msg.get_body(preferencelist=("plain",))
    attachments, xdm = [], None
    for part in msg.walk():
        name = part.get_filename()
        if part.is_multipart() or (name is None and not part.is_attachment()):
            continue
        data = part.get_payload(decode=True) or b""
        attachments.append({"filename": name, "content_type": part.get_content_type(),
                            "size": len(data)})
        if name and name.upper() == "IHE_XDM.ZIP":
            xdm = read_xdm(data)
    out = {
        "subject": msg["subject"],
        "from": msg["from"],
        "to": [addr.addr_spec for addr in msg["to"].addresses] if msg["to"] else [],
        "message_id": msg["message-id"],
        "disposition_notification_to": msg["disposition-notification-to"],
        "content_type": msg.get_content_type(),
        "body_text": body.get_content() if body is not None else None,
        "attachments": attachments,
        "xdm": xdm,
    }
    if a.cda_from_hl7:
        out["hl7_cda_sha256"] = cda_from_hl7(a.cda_from_hl7)
    # Header objects are str subclasses: json writes them as their (decoded) text.
    json.dump(out, sys.stdout, ensure_ascii=False)
    print()


if __name__ == "__main__":
    sys.exit(main())

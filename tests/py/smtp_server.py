"""A stand-in for an MSSanté operator's SMTP server, for tests only, built on PyPI aiosmtpd
(1.4.6, a peer nobody here wrote).

Listens on 127.0.0.1 (--port, 0 = ephemeral). --mode says how TLS is offered:
  implicit  TLS from the first byte (SMTPS, as on port 465);
  starttls  plaintext greeting, STARTTLS offered and required before MAIL (530 otherwise);
  plain     no TLS offered at all (to check that the client refuses to send in clear).
In the TLS modes a client certificate issued by --ca is required (TLS 1.2 minimum).

Every accepted message is written to --out as <n>.eml (the raw DATA bytes) and then
<n>.json: {"mail_from", "rcpt_tos", "peer_cert_san_uris", "peer_cert_subject", "tls",
"tls_version"}, n = 1, 2, ... Each file is written to a temporary name and renamed, the
.eml first, so a .json that exists means both are complete.

--reject-rcpt ADDRESS (repeatable) answers RCPT TO for it with 550 5.1.1; --tempfail-first N
answers the first N DATA transactions with 451 4.3.0 (after the data, where an SMTP server
gives its verdict), then accepts; --tempfail-at N (repeatable) answers the Nth DATA
transaction (counted from 1, refused ones included) with 451 4.3.0.

Prints "PORT <n>" once listening; runs until SIGTERM or SIGINT. Nothing about the messages'
content goes to stdout; aiosmtpd's warnings and errors go to stderr.
"""
import argparse
import asyncio
import itertools
import json
import logging
import os
import signal
import ssl
import sys

from aiosmtpd.smtp import SMTP

SHORT = {"commonName": "CN", "organizationName": "O", "organizationalUnitName": "OU",
         "countryName": "C", "localityName": "L", "stateOrProvinceName": "ST"}


def write_atomically(path, data):
    tmp = os.path.join(os.path.dirname(path), "." + os.path.basename(path) + ".tmp")
    with open(tmp, "wb") as f:
        f.write(data)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def tls_facts(server):
    """What the TLS session says of the client. The SSL object is read from the transport:
    in implicit mode aiosmtpd leaves session.ssl None; after STARTTLS server.transport is the
    SSL application transport, which answers get_extra_info('ssl_object') too."""
    obj = server.transport.get_extra_info("ssl_object") if server.transport else None
    if obj is None:
        return {"peer_cert_san_uris": [], "peer_cert_subject": None,
                "tls": False, "tls_version": None}
    cert = obj.getpeercert() or {}
    return {
        "peer_cert_san_uris": [v for k, v in cert.get("subjectAltName", ()) if k == "URI"],
        "peer_cert_subject": ", ".join(f"{SHORT.get(k, k)}={v}"
                                       for rdn in cert.get("subject", ()) for k, v in rdn)
                             or None,
        "tls": True,
        "tls_version": obj.version(),
    }


class Handler:
    def __init__(self, out, reject, tempfail, tempfail_at):
        self.out, self.reject, self.tempfail = out, reject, tempfail
        self.tempfail_at = set(tempfail_at)
        self.numbers = itertools.count(1)
        self.datas = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        if address.lower() in self.reject:
            return "550 5.1.1 mailbox unavailable"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.datas += 1
        if self.datas <= self.tempfail or self.datas in self.tempfail_at:
            return "451 4.3.0 try again later"
        n = next(self.numbers)
        record = {"mail_from": envelope.mail_from, "rcpt_tos": list(envelope.rcpt_tos),
                  **tls_facts(server)}
        write_atomically(os.path.join(self.out, f"{n}.eml"), envelope.original_content)
        write_atomically(os.path.join(self.out, f"{n}.json"),
                         json.dumps(record, indent=1).encode())
        return "250 OK"


def tls_context(a):
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.load_cert_chain(a.cert, a.key)
    ctx.load_verify_locations(a.ca)
    ctx.verify_mode = ssl.CERT_REQUIRED
    return ctx


async def serve(a):
    loop = asyncio.get_running_loop()
    handler = Handler(a.out, {r.lower() for r in a.reject_rcpt}, a.tempfail_first,
                      a.tempfail_at)
    ctx = tls_context(a) if a.mode != "plain" else None
    starttls = a.mode == "starttls"

    def factory():
        return SMTP(handler, hostname="localhost", data_size_limit=a.max_size, loop=loop,
                    tls_context=ctx if starttls else None, require_starttls=starttls)

    server = await loop.create_server(factory, "127.0.0.1", a.port,
                                      ssl=ctx if a.mode == "implicit" else None)
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    print(f"PORT {server.sockets[0].getsockname()[1]}", flush=True)
    await stop.wait()
    # No wait_closed(): from Python 3.12 on it waits for open connections too; asyncio.run
    # cancels the sessions left.
    server.close()


def main():
    p = argparse.ArgumentParser()
    p.add_argument("--mode", choices=["implicit", "starttls", "plain"], required=True)
    p.add_argument("--port", type=int, default=0)
    p.add_argument("--cert")
    p.add_argument("--key")
    p.add_argument("--ca", help="CA bundle that the required client certificate must chain to")
    p.add_argument("--out", required=True)
    p.add_argument("--reject-rcpt", action="append", default=[], metavar="ADDRESS")
    p.add_argument("--tempfail-first", type=int, default=0, metavar="N")
    p.add_argument("--tempfail-at", type=int, action="append", default=[], metavar="N")
    p.add_argument("--max-size", type=int, default=50 * 1024 * 1024, help="bytes")
    a = p.parse_args()
    if a.mode != "plain" and not (a.cert and a.key and a.ca):
        p.error(f"--mode {a.mode} needs --cert, --key and --ca")
    os.makedirs(a.out, exist_ok=True)
    # aiosmtpd warns (once per connection) that CERT_REQUIRED "might cause client connection
    # problems": that is the point here, so only its errors are shown.
    logging.basicConfig(stream=sys.stderr, level=logging.WARNING)
    logging.getLogger("mail.log").setLevel(logging.ERROR)
    asyncio.run(serve(a))


if __name__ == "__main__":
    sys.exit(main())

"""A real SMTP server for zoomwire's email tests, built on aiosmtpd.

It listens on 127.0.0.1 on a free port, prints `READY <port>` once it
accepts connections, and writes every message it receives to the output
folder as one JSON file (envelope, parsed headers and MIME parts, whether the
session was authenticated and encrypted). Recipients whose local part is
`reject-permanent` or `reject-temporary` are refused with 550 or 451. It
stops when its standard input closes (the test process ended) or when killed.

Options: --out DIR, --auth USER:PASS (AUTH required; each attempt is logged to
DIR/auth-attempts.log), --tls none|starttls|implicit with --cert and --key
(PEM files).
"""

import argparse
import asyncio
import email
import email.policy
import json
import logging
import os
import ssl
import sys
import warnings

from aiosmtpd.smtp import SMTP, AuthResult, LoginPassword


class Sink:
    def __init__(self, out_dir):
        self.out_dir = out_dir
        self.count = 0

    async def handle_RCPT(self, server, session, envelope, address, rcpt_options):
        local = address.split("@")[0].lower()
        if local == "reject-permanent":
            return "550 5.1.1 no such user here"
        if local == "reject-temporary":
            return "451 4.3.0 mailbox busy, try again later"
        envelope.rcpt_tos.append(address)
        return "250 OK"

    async def handle_DATA(self, server, session, envelope):
        self.count += 1
        content = envelope.original_content or envelope.content
        message = email.message_from_bytes(content, policy=email.policy.default)
        parts = []
        for part in message.walk():
            if part.is_multipart():
                continue
            parts.append(
                {
                    "content_type": part.get_content_type(),
                    "content": part.get_content(),
                }
            )
        record = {
            "mail_from": envelope.mail_from,
            "rcpt_tos": envelope.rcpt_tos,
            "headers": {name.lower(): str(value) for name, value in message.items()},
            "content_type": message.get_content_type(),
            "parts": parts,
            "authenticated": bool(getattr(session, "authenticated", False)),
            "tls": session.ssl is not None
            or server.transport.get_extra_info("ssl_object") is not None,
            "raw": content.decode("utf-8", "replace"),
        }
        path = os.path.join(self.out_dir, "%04d.json" % self.count)
        with open(path + ".tmp", "w", encoding="utf-8") as out:
            json.dump(record, out)
        os.replace(path + ".tmp", path)
        return "250 2.0.0 message accepted"


def authenticator(user, password, out_dir):
    def check(server, session, envelope, mechanism, auth_data):
        # Every AUTH that reached the server, so a test can show none did.
        with open(os.path.join(out_dir, "auth-attempts.log"), "a", encoding="utf-8") as log:
            log.write("%s\n" % mechanism)
        ok = (
            isinstance(auth_data, LoginPassword)
            and auth_data.login == user.encode()
            and auth_data.password == password.encode()
        )
        # handled=False: aiosmtpd answers 535 itself on failure.
        return AuthResult(success=ok, handled=False)

    return check


async def main():
    # aiosmtpd warns about AUTH without TLS, which the plain tests want.
    warnings.simplefilter("ignore")
    logging.basicConfig(level=logging.ERROR)
    parser = argparse.ArgumentParser()
    parser.add_argument("--out", required=True)
    parser.add_argument("--auth")
    parser.add_argument("--tls", default="none", choices=["none", "starttls", "implicit"])
    parser.add_argument("--cert")
    parser.add_argument("--key")
    args = parser.parse_args()

    context = None
    if args.tls != "none":
        context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        context.load_cert_chain(args.cert, args.key)

    handler = Sink(args.out)

    def factory():
        options = {"hostname": "sink.test"}
        if args.auth:
            user, password = args.auth.split(":", 1)
            options.update(
                authenticator=authenticator(user, password, args.out),
                auth_required=True,
                # With implicit TLS aiosmtpd does not know the socket is
                # encrypted, so it would never offer AUTH.
                auth_require_tls=args.tls == "starttls",
            )
        if args.tls == "starttls":
            options.update(tls_context=context, require_starttls=True)
        return SMTP(handler, **options)

    loop = asyncio.get_running_loop()
    server = await loop.create_server(
        factory,
        host="127.0.0.1",
        port=0,
        ssl=context if args.tls == "implicit" else None,
    )
    port = server.sockets[0].getsockname()[1]
    print("READY %d" % port, flush=True)
    await loop.run_in_executor(None, sys.stdin.read)
    server.close()


if __name__ == "__main__":
    asyncio.run(main())

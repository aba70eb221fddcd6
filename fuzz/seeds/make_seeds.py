#!/usr/bin/env python3
"""Writes the fuzz targets' seed inputs (fuzz/seeds/<target>/) from the
shared sample events, the repository's rules and examples, the example
configuration and the conditions of crates/zoomwire-engine/src/rules/fast.rs's tests.

The committed corpus (fuzz/corpus/) began as these seeds, was grown by
fuzzing and minimised with `cargo fuzz cmin`; run this again only to start
a corpus afresh. Usage: python3 fuzz/seeds/make_seeds.py [SHARED_EVENTS_DIR]
"""

import hashlib
import hmac
import json
import pathlib
import random
import re
import sys

ROOT = pathlib.Path(__file__).resolve().parents[2]
OUT = ROOT / "fuzz" / "seeds"
SHARED = pathlib.Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / ".." / "shared" / "events"
SECRET = b"fuzz_webhook_secret_token"  # as fuzz/src/lib.rs


def write(target, name, data):
    folder = OUT / target
    folder.mkdir(parents=True, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    (folder / name).write_bytes(data)


def events():
    found = {}
    for folder in [SHARED, ROOT / "examples" / "events"]:
        for path in sorted(folder.glob("*.json")):
            found.setdefault(path.name, path.read_text())
    return found


def frames():
    found = {}
    for folder in [SHARED / "frames", ROOT / "examples" / "frames"]:
        for path in sorted(folder.glob("*.json")):
            found.setdefault(path.name, path.read_text())
    return found


def frame_seeds(evts):
    for name, text in frames().items():
        write("frame_decoder", "shared-" + name, text)
    for name, text in evts.items():
        body = json.loads(text)
        compact = json.dumps(body, separators=(",", ":"))
        write("frame_decoder", "string-" + name,
              json.dumps({"module": "message", "content": compact}))
        write("frame_decoder", "ascii-" + name,
              json.dumps({"module": "message", "content": json.dumps(body, ensure_ascii=True)}))
        write("frame_decoder", "object-" + name,
              json.dumps({"module": "message", "content": body}))
    odd = [
        r'{"module":"message","content":"{\"event\":\"a\u00e9\ud83d\ude00\",\"x\":\"\\\/\b\f\n\r\t\"}"}',
        r'{"module":"message","content":"{\"event\":\"a\",\"x\":\"\ud83d\"}"}',
        r'{"module":"heartbeat","success":false,"content":"live","header":{}}',
        r'{"module":"build_connection","success":false,"content":"Token is invalid"}',
        r'{"module":"notice","content":"  INVALID TOKEN, please reconnect"}',
        r'{"module":"message","content":"[1,2]"}',
        r'{"module":"mystery","content":{"a":[1,2.5e3,null,true]}}',
    ]
    for n, text in enumerate(odd):
        write("frame_decoder", f"odd-{n}", text)


def sign(stamp, body):
    return "v0=" + hmac.new(SECRET, b"v0:" + stamp + b":" + body, hashlib.sha256).hexdigest()


def webhook_seeds(evts):
    for name, text in evts.items():
        body = json.loads(text)
        for layout, raw in [("compact", json.dumps(body, separators=(",", ":"))), ("pretty", text)]:
            raw = raw.encode()
            for stamp in [b"1732030000", b"1732030000123"]:
                seed = stamp + b"\n" + sign(stamp, raw).encode() + b"\n" + raw
                write("webhook_verifier", f"{layout}-{stamp.decode()}-{name}", seed)
    for n, seed in enumerate([b"abc\nv0=00\n{}", b"\n\n", b"1732030000\nv0=zz\n{\"event\":\"x\"}",
                              b" 1732030000 \nV0=00\n{\"event\":\"endpoint.url_validation\",\"payload\":{}}"]):
        write("webhook_verifier", f"odd-{n}", seed)


def rule_seeds():
    for folder in ["rules", "examples"]:
        for path in sorted((ROOT / folder).glob("*.yaml")):
            write("rule_loader", f"{folder}-{path.name}", path.read_text())
    odd = [
        "- name: a\n  on: meeting.*\n  do: log::info(`x ${event.event}`)\n- name: b\n  schedule: \"0 0 9 * * Mon\"\n  timezone: Europe/Berlin\n  do: { script: zoomfmt.rhai }\n",
        "name: q\non: [meeting.started, meeting.ended]\nwhen: \"event.a == 1 &&\\n event.b\"\nkey: event.payload.object.uuid\nmode: queued\nmax_queued: 3\ndo: >\n  let x = 1;\n  x +\n",
        "name: r\non: user.created\nallow: [slak, http:example.com]\nretry: { attempts: 5, backoff: 2s, max_backoff: 5m }\ntimeout: 0s\ndo: |\n  import \"zoomfmt\" as f;\n  fn g() { g() }\n  g()\n",
        "a: &x [*x]\n",
        "",
    ]
    for n, text in enumerate(odd):
        write("rule_loader", f"odd-{n}.yaml", text)


def config_seeds():
    example = (ROOT / "zoomwire.example.yaml").read_text()
    dotenv = "ZOOM_ACCOUNT_ID=acc\nZOOM_CLIENT_ID=cid\nZOOM_CLIENT_SECRET='s3cret value'\nexport ZOOM_SUBSCRIPTION_ID=\"wss://ws.zoom.us/ws?subscriptionId=sub\" # pasted\n"
    env = "SMTP_URL=smtp://user:pa55word-smtp@relay:587\nZOOMWIRE_ADMIN_TOKEN=admin-token-123456\nZOOMWIRE_ADMIN_ADDR=0.0.0.0:9797\n"
    write("config_loader", "example", example)
    write("config_loader", "example-dotenv-env", example + "\0" + dotenv + "\0" + env)
    write("config_loader", "dotenv-only", "\0" + dotenv)
    write("config_loader", "env-only", "\0\0" + env + "ZOOM_WS_BASE=ws://127.0.0.1:9/ws?x=1\nSLACK_WEBHOOK_URL=http://hooks.example/aaaaaaaa\n")
    write("config_loader", "bad-values", "zoom:\n  api_base: ftp://x\nwebhook:\n  max_body: 12 parsecs\njournal:\n  store: postgres\nunknown: 1\n\0A=\"unterminated\n\0ZOOMWIRE_RETENTION=-1s\n")


def condition_seeds(evts):
    fast = (ROOT / "crates" / "zoomwire-engine" / "src" / "rules" / "fast.rs").read_text()
    conditions = set()
    for block in re.findall(r"let own = \[(.*?)\];", fast, re.S) + re.findall(r"USER_CONDITIONS: \[&str; \d+\] = \[(.*?)\];", fast, re.S):
        for raw, plain in re.findall(r'r#"(.*?)"#|"((?:[^"\\]|\\.)*)"', block):
            conditions.add(raw if raw else plain.encode().decode("unicode_escape"))
    for folder in ["rules", "examples"]:
        for path in (ROOT / folder).glob("*.yaml"):
            for m in re.findall(r"^when: (.+)$", path.read_text(), re.M):
                if m.strip() != "|":
                    conditions.add(m.strip())
    bodies = [json.dumps(json.loads(t), separators=(",", ":")) for t in evts.values()]
    bodies += [
        '{"event":"x","i":1,"f":0.30000000000000004,"z":1e-300,"s":"é!","t":true,"n":null,"d":{"k":1,"k":2},"l":[1,[2]],"o":{"k":"v"}}',
        '{"event":"x","a":"abc","b":2.5,"s":"","o":{"a":1,"s":"é"},"l":[0,"b",{}],"o":[1]}',
        '{"event":"x","payload":{"object":{"duration":1e3,"type":"8","topic":"Incident 🔥","settings":{"waiting_room":null},"recording_files":[[]],"total_size":18446744073709551615}}}',
    ]
    rng = random.Random(7)
    for n, condition in enumerate(sorted(c for c in conditions if "\n" not in c)):
        for body in rng.sample(bodies, 2):
            write("fast_conditions", f"c{n:03}-{hashlib.sha1(body.encode()).hexdigest()[:8]}", condition + "\n" + body)


def main():
    evts = events()
    frame_seeds(evts)
    webhook_seeds(evts)
    rule_seeds()
    config_seeds()
    condition_seeds(evts)


main()

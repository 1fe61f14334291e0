"""schemathesis hooks for scripts/test.sh (SCHEMATHESIS_HOOKS points here), both services.

An Idempotency-Key names one request: the same key with another body is refused (422,
`idempotency-key-reused`), as the service documents. Generated cases reuse short keys
("0", "A") with other bodies, which no schema can rule out, so each well-formed key gets a
suffix of its own; a malformed one (empty, too long, not visible ASCII) is sent as drawn."""

import re
import uuid

import schemathesis

KEY = re.compile(r"^[ \t]*[\x21-\x7E]([\t\x20-\x7E]{0,253}[\x21-\x7E])?[ \t]*$")


@schemathesis.hook
def before_call(ctx, case, **kwargs):
    headers = case.headers or {}
    for name in list(headers):
        value = headers[name]
        if name.lower() != "idempotency-key" or not isinstance(value, str):
            continue
        key = value.strip(" \t")
        if KEY.match(value) and len(key) <= 255 - 13:
            headers[name] = f"{key}-{uuid.uuid4().hex[:12]}"

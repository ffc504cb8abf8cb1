"""Schemathesis hooks for the watchpost-admin fuzz run (loaded through SCHEMATHESIS_HOOKS).

`cursor` is an opaque token the API issues (base64url of a position in a list): any value a
generator makes up is malformed by construction and rightly answers 400, so it is dropped
from positive test cases (negative ones keep it, to probe the cursor decoder). Pagination
itself is covered by the integration tests.
"""

import schemathesis


@schemathesis.hook
def before_call(context, case, kwargs):
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive:
        return
    for container in (case.query, case.body):
        if isinstance(container, dict):
            container.pop("cursor", None)

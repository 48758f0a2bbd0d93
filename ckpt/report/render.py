"""The report page: one self-contained HTML file, rendered with Jinja2.

Terms:
    page     ``templates/report.html.j2`` with ``report.css`` and ``report.js``
             inlined; nothing is loaded from anywhere (no URL in any ``src`` or
             ``href`` but ``#p<position>`` anchors).
    policy   the page's Content-Security-Policy (a ``<meta>``): no source at all
             (``default-src 'none'``) except the one inline style sheet and the
             one inline script, named by their SHA-256. A browser therefore
             refuses any network load, and any script or handler a store name
             could smuggle in, even if escaping failed.
Every text from the store (VM, checkpoint, actor, host, details) goes through
Jinja's autoescape; the page embeds no JSON (the script reads ``data-``
attributes), so there is no ``<script>`` context to escape for.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
from collections.abc import Iterator
from typing import Any

from jinja2 import Environment, PackageLoader, StrictUndefined
from markupsafe import Markup

from .data import ReportData
from .storage_chart import chart, human
from .timeline import KINDS, layout

# A chart point is one SVG circle with its own tooltip; past this many captures a
# VM's chart keeps only its lines (the page stays light for stores of 300,000 events).
CHART_DOTS = 2000


@functools.cache  # compiling the template takes ~0.25 s; once per process
def _environment() -> Environment:
    env = Environment(
        loader=PackageLoader("ckpt.report", "templates"),
        autoescape=True,  # every template, whatever its name
        undefined=StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )
    env.filters["human"] = human
    env.filters["compact"] = lambda d: json.dumps(d, ensure_ascii=False, sort_keys=True)
    return env


def _static(env: Environment, name: str) -> str:
    assert env.loader is not None
    text: str = env.loader.get_source(env, name)[0]
    return text


def _sha256(text: str) -> str:
    return "sha256-" + base64.b64encode(hashlib.sha256(text.encode()).digest()).decode()


def render(data: ReportData) -> Iterator[str]:
    """The page, in pieces as Jinja yields them: a caller writes each as it comes,
    so the page is never held whole (~1 KB an event)."""
    env = _environment()
    css = _static(env, "report.css")
    js = _static(env, "report.js")
    csp = (
        f"default-src 'none'; style-src '{_sha256(css)}'; script-src '{_sha256(js)}'; "
        "img-src 'none'; base-uri 'none'; form-action 'none'"
    )
    events = data.events
    vms: list[dict[str, Any]] = []
    for h in data.histories:
        c = chart(h.captures)
        vms.append(
            {
                "history": h,
                "anchor": f"vm-{h.vm_id}",
                "timeline": layout(h.events),
                "chart": c,
                "dots": len(c.points) <= CHART_DOTS,
            }
        )
    return env.get_template("report.html.j2").generate(
        data=data,
        vms=vms,
        events=events,
        actors=sorted({e.actor for e in events}),
        operations=sorted({e.operation for e in events}),
        vm_names=sorted({e.vm for e in events}),
        kinds=KINDS,
        css=Markup(css),  # our own files, inlined byte for byte (the policy hashes them)
        js=Markup(js),
        csp=csp,
    )

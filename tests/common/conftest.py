"""The harness of the common parts' tests: reading what telemetry exports."""

from __future__ import annotations

import base64
import urllib.request
import uuid

from printernizer_stats.common.telemetry import ADDRESS, mask_addresses
from prometheus_client.parser import text_string_to_metric_families


def identifier_forms(identifier: bytes) -> list[str]:
    """Every way an ID could be written: hex, UUID, base64."""
    return [identifier.hex(), str(uuid.UUID(bytes=identifier)), base64.b64encode(identifier).decode()]


def scrape(port: int) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    assert mask_addresses(text) == text, ADDRESS.findall(text)  # no address in any label
    return {
        (sample.name, tuple(sorted((k, v) for k, v in sample.labels.items() if not k.startswith("otel_")))): (
            sample.value
        )
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }

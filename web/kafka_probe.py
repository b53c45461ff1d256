"""Is Kafka reachable now, and if not, why: for ``/health`` and the ingest gate.

The question goes through the app producer's own client (cluster metadata from any known
broker), bounded by a timeout. When it fails, each bootstrap address is tried with a plain TCP
connection so the answer names what is wrong (refused, unresolvable, timed out), instead of
aiokafka's "Unable to get cluster metadata over all known brokers".
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Sequence
from typing import Any

PROBE_TIMEOUT_S = 3.0
CONNECT_TIMEOUT_S = 1.0


def describe_error(exc: BaseException) -> str:
    """``Class: message``, or the class alone when the message is empty (timeouts); aiokafka's
    errors already start with their class name."""
    name = type(exc).__name__
    text = str(exc).strip()
    if not text or text == name:
        return name
    return text if text.startswith(name + ":") else f"{name}: {text}"


async def tcp_diagnosis(brokers: Sequence[str], timeout: float = CONNECT_TIMEOUT_S) -> str:
    """What a TCP connection to each bootstrap address meets, ``; ``-separated."""
    findings = []
    for broker in brokers:
        host, _, port = broker.rpartition(":")
        try:
            async with asyncio.timeout(timeout):
                _, writer = await asyncio.open_connection(host or "127.0.0.1", int(port))
        except TimeoutError:
            findings.append(f"{broker}: no TCP answer within {timeout:g} s")
        except (OSError, ValueError) as exc:
            findings.append(f"{broker}: {describe_error(exc)}")
        else:
            writer.close()
            with contextlib.suppress(OSError):
                await writer.wait_closed()
            findings.append(f"{broker}: accepts TCP connections but gave no cluster metadata")
    return "; ".join(findings)


async def kafka_status(
    client: Any, brokers: Sequence[str], timeout: float = PROBE_TIMEOUT_S
) -> dict[str, Any]:
    """``{"connected": True, "brokers": n}`` or ``{"connected": False, "error": why}``, within
    about ``timeout`` plus the TCP checks; ``client`` is an AIOKafkaClient."""
    try:
        metadata = await asyncio.wait_for(client.fetch_all_metadata(), timeout)
        return {"connected": True, "brokers": len(metadata.brokers())}
    except Exception as exc:  # any failure means "not reachable now"
        reason = describe_error(exc)
        if isinstance(exc, TimeoutError):
            reason = f"no cluster metadata within {timeout:g} s"
        return {"connected": False, "error": f"{reason} ({await tcp_diagnosis(brokers)})"}

"""The SSRF guard for URLs a user supplies: a URL is a door into the worker's network.

http(s) hosts must resolve to public addresses unless `settings.allowed_hosts` names them, every
redirect hop is checked again, and the connection goes to the address that was checked, so a second
DNS answer cannot swap in a private one.
"""
from __future__ import annotations

import ipaddress
import socket

import httpx

from s2v.errors import InputError, TransientError
from s2v.settings import Settings
from s2v.storage.redaction import redact


def guarded_request(client: httpx.Client, url: httpx.URL, field: str, settings: Settings) -> httpx.Request:
    shown = redact(str(url))
    if url.scheme not in ("http", "https"):
        raise InputError(field, shown, f"redirected to unsupported scheme {url.scheme!r}")
    address = public_address(url, field, shown, settings)
    if address is None:
        return client.build_request("GET", url)
    # Connect to the address that was checked: a second DNS answer cannot swap in a private one.
    extensions = {"sni_hostname": url.host} if url.scheme == "https" else {}
    return client.build_request(
        "GET", url.copy_with(host=address), headers={"Host": url.netloc.decode("ascii")}, extensions=extensions
    )


def public_address(url: httpx.URL, field: str, shown: str, settings: Settings) -> str | None:
    """The public address to connect to, or None when `settings.allowed_hosts` names the host."""
    host = url.host.lower()
    if not host:
        raise InputError(field, shown, "URL has no host")
    if host in {allowed.lower().strip("[]") for allowed in settings.allowed_hosts}:
        return None
    port = url.port or (443 if url.scheme == "https" else 80)
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        if exc.errno == socket.EAI_AGAIN:
            raise TransientError(f"{field} {shown}: DNS lookup failed for now ({exc.strerror})") from None
        raise InputError(field, shown, f"host not found ({exc.strerror})") from None
    addresses = [ipaddress.ip_address(info[4][0].split("%")[0]) for info in infos]
    for address in addresses:
        kind = _non_public_kind(address)
        if kind:
            raise InputError(
                field, shown,
                f"host resolves to a {kind} address ({address}); name it in S2V_ALLOWED_HOSTS if it is meant to be reached",
            )
    return str(addresses[0])


def _non_public_kind(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped:
        address = address.ipv4_mapped
    if address.is_unspecified:
        return "unspecified"
    if address.is_loopback:
        return "loopback"
    if address.is_link_local:
        return "link-local (cloud metadata)"
    if address.is_private:
        return "private"
    if address.is_multicast or address.is_reserved or not address.is_global:
        return "non-public"
    return None

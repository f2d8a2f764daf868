"""What a ``slidewatch serve`` process serves and how it guards it.

Rules (checked by :func:`check_settings` before anything listens):

* ``data_root`` is an existing folder; scenes are taken from under it only.
* ``workdir`` (default ``./slidewatch-serve``; never inside the data root unless asked, which
  may be read-only) holds jobs, scan outputs, reviews and uploads.
* A server bound to a loopback address (127.0.0.0/8, ::1, ``localhost``) is open to this
  machine; bound to any other address it needs a token (``--token`` or ``SLIDEWATCH_TOKEN``),
  and every route but ``/api/health`` then asks for it (``Authorization: Bearer T`` or
  ``?token=T``).
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from pathlib import Path

from slidewatch.errors import ConfigError

MIN_TOKEN_LENGTH = 16
LOOPBACK_NAMES = {"localhost", "localhost.localdomain", "ip6-localhost"}


def is_loopback(host: str) -> bool:
    """``host`` names this machine only (127.0.0.0/8, ::1 or localhost)."""
    host = host.strip().strip("[]").lower()
    if host in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class ServeSettings:
    data_root: Path
    workdir: Path
    models: tuple[Path, ...] = ()
    token: str | None = None
    host: str = "127.0.0.1"
    port: int = 8000
    max_upload_mb: float = 2048.0
    cors_origins: tuple[str, ...] = ()
    device: str = "auto"
    reviewer: str = ""  # default reviewer name offered by the page (the OS user)
    extra_hosts: tuple[str, ...] = field(default=())  # Host headers allowed besides loopback

    @property
    def max_upload_bytes(self) -> int:
        return int(self.max_upload_mb * 2**20)

    @property
    def open_to_network(self) -> bool:
        return not is_loopback(self.host)


def check_settings(s: ServeSettings) -> ServeSettings:
    """The settings with resolved folders, or a one-line ConfigError naming the option."""
    root = Path(s.data_root).expanduser()
    if not root.is_dir():
        raise ConfigError(f"--data-root {root}: not a folder")
    models = []
    for m in s.models:
        m = Path(m).expanduser()
        if not m.is_dir():
            raise ConfigError(f"--models {m}: not a folder")
        models.append(m.resolve())
    if s.max_upload_mb <= 0:
        raise ConfigError(f"--max-upload-mb: must be > 0, got {s.max_upload_mb}")
    if not 0 < s.port < 65536:
        raise ConfigError(f"--port: must be 1..65535, got {s.port}")
    token = s.token or None
    if token is not None and len(token) < MIN_TOKEN_LENGTH:
        raise ConfigError(f"--token: at least {MIN_TOKEN_LENGTH} characters, got {len(token)} "
                          f"(e.g. python -c 'import secrets; print(secrets.token_urlsafe())')")
    if token is None and not is_loopback(s.host):
        raise ConfigError(f"--host {s.host}: binding to an address other machines can reach "
                          f"needs a token; pass --token or set SLIDEWATCH_TOKEN")
    work = Path(s.workdir).expanduser()
    try:
        work.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--workdir {work}: cannot create it ({exc.strerror})") from None
    return ServeSettings(root.resolve(), work.resolve(), tuple(models), token, s.host, s.port,
                         float(s.max_upload_mb), tuple(s.cors_origins), s.device, s.reviewer,
                         tuple(s.extra_hosts))

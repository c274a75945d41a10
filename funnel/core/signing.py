"""Authenticating exported artifacts: HMAC-SHA256 with a key kept outside the model repository.

A model repository is code: its pickled graph runs when it is loaded. A checksum stored next
to the pickle only detects accidents (anyone who can change the pickle can change the
checksum); an HMAC needs the signing key, which never enters the repository. The key is, in
order: ``FUNNEL_SIGNING_KEY`` (the key itself), the file named by ``FUNNEL_SIGNING_KEY_FILE``,
or ``$XDG_CONFIG_HOME/funnel/signing.key`` (default ``~/.config/funnel/signing.key``), created
with mode 600 on first use when signing. Serve on another host by giving it the same key
(a secret mount, an environment variable), never by copying it into the repository.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import secrets
from pathlib import Path

from funnel.core.errors import FunnelError

PREFIX = "hmac-sha256:"


def key_path() -> Path:
    if os.environ.get("FUNNEL_SIGNING_KEY_FILE"):
        return Path(os.environ["FUNNEL_SIGNING_KEY_FILE"])
    config = Path(os.environ.get("XDG_CONFIG_HOME") or Path.home() / ".config")
    return config / "funnel" / "signing.key"


def signing_key(create: bool = False) -> bytes:
    """The key; with ``create`` a missing default key file is generated (mode 600)."""
    if os.environ.get("FUNNEL_SIGNING_KEY"):
        return os.environ["FUNNEL_SIGNING_KEY"].encode()
    path = key_path()
    if not path.exists():
        if not create:
            raise FunnelError(f"no signing key: {path} does not exist (set FUNNEL_SIGNING_KEY or "
                              "FUNNEL_SIGNING_KEY_FILE to the key the export was signed with)")
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(secrets.token_hex(32) + "\n")
        try:
            os.link(tmp, path)  # never replaces a key another process created meanwhile
        except FileExistsError:
            pass
        tmp.unlink()
    key = path.read_bytes().strip()
    if len(key) < 16:
        raise FunnelError(f"{path}: signing key too short (at least 16 bytes)")
    return key


def sign_files(paths: list[Path], key: bytes | None = None) -> str:
    """``hmac-sha256:<hex>`` over the bytes of ``paths`` in order."""
    mac = hmac.new(key if key is not None else signing_key(create=True), digestmod=hashlib.sha256)
    for path in paths:
        with open(path, "rb") as handle:
            while block := handle.read(1 << 20):
                mac.update(block)
    return PREFIX + mac.hexdigest()


def verify_files(paths: list[Path], signature: str | None, what: str) -> None:
    """Raise FunnelError unless ``signature`` is the HMAC of ``paths`` under this host's key."""
    if not signature or not signature.startswith(PREFIX):
        raise FunnelError(f"{what}: not signed (exported by an older funnel?); refusing to load it: re-export")
    if not hmac.compare_digest(sign_files(paths, signing_key()), signature):
        raise FunnelError(f"{what}: signature does not match (changed after export, or signed with another key "
                          f"than {key_path() if not os.environ.get('FUNNEL_SIGNING_KEY') else 'FUNNEL_SIGNING_KEY'}); "
                          "refusing to unpickle it")

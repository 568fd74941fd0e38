"""Ed25519 signatures over release manifests (the cryptography package).

The cloud keeps the private key; every device holds the public key and refuses a model whose
manifest signature does not verify, or whose bytes do not hash to the manifest's sha256. A
manifest is signed in a canonical form (JSON, sorted keys, no spaces), so the same content always
has the same signature input wherever it was serialised.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from racmkd.utils import UMASK, write_new


class SignatureError(ValueError):
    """A signature or key is missing, malformed or does not verify; the message says which."""


def canonical(manifest: dict[str, Any]) -> bytes:
    """The bytes a manifest's signature covers."""
    return json.dumps(manifest, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()


def generate_keypair(folder: Path, name: str = "racmkd") -> tuple[Path, Path]:
    """Write <name>.key (private, PEM, mode 0600) and <name>.pub (public, PEM) into `folder`, both
    or neither: each is written to a temporary file in the folder, and only when both are whole are
    they moved into place, where no file is (`_claim`). Written one after the other, a full disk left the private key without
    its public one, and a second try refused to overwrite the half pair."""
    folder = Path(folder)
    private_path, public_path = folder / f"{name}.key", folder / f"{name}.pub"
    for path in (private_path, public_path):  # both checked before either is written: never half a pair
        if path.exists():
            raise SignatureError(f"{path} exists; refusing to overwrite a signing key (delete it first if you mean to)")
    if folder.exists() and not folder.is_dir():
        raise SignatureError(f"{folder}: a file, not a folder for the keys")
    folder.mkdir(parents=True, exist_ok=True)
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption())
    public = key.public_key().public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    _write_pair(folder, {private_path: (private, 0o600), public_path: (public, 0o666 & ~UMASK)})  # the public key gets the umask's usual mode
    return private_path, public_path


def _write_pair(folder: Path, files: dict[Path, tuple[bytes, int]]) -> None:
    """Write each file's bytes with its mode where no file is (`write_new`: a rename would replace
    a key another keygen wrote after this one's check, leaving one's private key beside the other's
    public one); if anything fails, the keys this call wrote are removed and an OSError names the
    folder, the cause and the fix (a SignatureError, a key that appeared meanwhile)."""
    written: list[Path] = []
    try:
        for path, (data, mode) in files.items():
            write_new(path, data, mode)
            written.append(path)
    except BaseException as err:
        for path in written:
            path.unlink(missing_ok=True)
        if isinstance(err, FileExistsError):
            raise SignatureError(
                f"{err.filename} appeared while the keys were written (another keygen?); nothing of this one was kept: use the pair there"
            ) from None
        if isinstance(err, OSError):
            raise OSError(
                err.errno,
                f"cannot write the key pair there ({err.strerror or err}); nothing was left behind: free space on its disk or make the folder writable, then run `racmkd registry keygen` again",
                str(folder),
            ) from None
        raise


def load_private_key(path: Path) -> Ed25519PrivateKey:
    """The registry's signing key (`racmkd registry keygen`); SignatureError naming the file otherwise."""
    try:
        key = serialization.load_pem_private_key(Path(path).read_bytes(), password=None)
    except (OSError, ValueError, TypeError) as err:
        raise SignatureError(f"{path}: not a readable PEM private key ({err}). Create one with `racmkd registry keygen`.") from None
    if not isinstance(key, Ed25519PrivateKey):
        raise SignatureError(f"{path}: not an Ed25519 key")
    return key


def load_public_key(path: Path | bytes) -> Ed25519PublicKey:
    """A device's key to check releases with (a PEM file, or its bytes); SignatureError otherwise."""
    try:
        data = path if isinstance(path, bytes) else Path(path).read_bytes()
        key = serialization.load_pem_public_key(data)
    except (OSError, ValueError, TypeError) as err:
        raise SignatureError(f"{path if not isinstance(path, bytes) else 'public key'}: not a readable PEM public key ({err})") from None
    if not isinstance(key, Ed25519PublicKey):
        raise SignatureError("not an Ed25519 public key")
    return key


def sign(manifest: dict[str, Any], key: Ed25519PrivateKey) -> str:
    """The hex signature of a manifest."""
    return key.sign(canonical(manifest)).hex()


def verify(manifest: dict[str, Any], signature: str, key: Ed25519PublicKey) -> None:
    """Raise SignatureError unless `signature` is the key's signature of exactly this manifest."""
    try:
        key.verify(bytes.fromhex(signature), canonical(manifest))
    except (InvalidSignature, ValueError, TypeError, RecursionError):  # (RecursionError: JSON nested too deep to write out)
        raise SignatureError(
            f"bad signature for {manifest.get('name')!r} v{manifest.get('version')!r}: the manifest was altered or not signed by this fleet's key"
        ) from None

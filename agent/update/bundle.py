"""Release bundles: a signed manifest naming every wheel of a release by hash, and the wheels.

A bundle is an uncompressed tar (the wheels are already compressed):

    manifest.json   {"format": 1, "name": "water-edge-agent", "version": "0.2.0", "python": "3.11",
                     "config_schema": {"min": 1, "max": 1}, "outbox_schema": 1, "created": "...",
                     "wheels": [{"file": "...whl", "sha256": "...", "size": N}, ...],
                     "min_version": "0.2.0"}   (optional: the floor the release sets, floor.py)
    manifest.sig    {"key_id": "release-2026", "sig": "<base64 Ed25519 signature>"}
    wheels/*.whl    the wheels carried; a thin bundle leaves out those the gateways already hold

manifest.json and manifest.sig come first, in either order: nothing behind them is read before the
signature is checked.

The signature covers `SIGNING_DOMAIN + manifest.json` byte for byte, so nothing is re-serialised
before it is checked; the domain keeps a release signature from being valid as anything else the
key might sign. The manifest lists *every* wheel of the release with its sha256, carried or not:
the gateway installs exactly those files and nothing a resolver might pick.

Trusted release keys are a file of `NAME BASE64-PUBLIC-KEY` lines (`/etc/edge-agent/release-keys`),
root-owned and outside everything the agent may write.
"""

from __future__ import annotations

import base64
import binascii
import datetime as dt
import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import orjson
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from water_edge.agent.update.versions import EXPECTED, ReleaseVersion, VersionError
from water_edge.core.digests import sha256_file
from water_edge.core.errors import AgentError

SIGNING_DOMAIN: Final = b"water-edge-agent/release/v1\n"
FORMAT: Final = 1
MANIFEST, SIGNATURE, WHEELS = "manifest.json", "manifest.sig", "wheels"
MAX_MANIFEST_BYTES: Final = 256 * 1024
_WHEEL_NAME = re.compile(r"^[A-Za-z0-9_.+-]{1,200}\.whl$")
_KEY_NAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_VERSION = re.compile(r"^[0-9][A-Za-z0-9.+!-]{0,63}$")


class BundleError(AgentError):
    """A bundle is not a valid, trusted release: says what is wrong."""


@dataclass(frozen=True, slots=True)
class Wheel:
    file: str
    sha256: str
    size: int


@dataclass(frozen=True, slots=True)
class Manifest:
    version: str
    python: str
    config_schema_min: int
    config_schema_max: int
    outbox_schema: int
    wheels: tuple[Wheel, ...]
    key_id: str
    created: str
    name: str = "water-edge-agent"
    # The lowest release a gateway may install once this one is committed there (floor.py); None:
    # it leaves the floor as it is.
    min_version: str | None = None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {
            "format": FORMAT,
            "name": self.name,
            "version": self.version,
            "python": self.python,
            "config_schema": {"min": self.config_schema_min, "max": self.config_schema_max},
            "outbox_schema": self.outbox_schema,
            "created": self.created,
            "wheels": [{"file": w.file, "sha256": w.sha256, "size": w.size} for w in self.wheels],
        }
        if self.min_version is not None:
            doc["min_version"] = self.min_version
        return doc


# ------------------------------------------------------------------ keys


def load_release_keys(path: Path) -> dict[str, Ed25519PublicKey]:
    """`NAME BASE64-KEY` per line (`#` starts a comment); BundleError naming the line if not."""
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise BundleError(f"cannot read the release keys {path}: {exc.strerror}") from exc
    keys: dict[str, Ed25519PublicKey] = {}
    for number, line in enumerate(text.splitlines(), 1):
        words = line.split("#", 1)[0].split()
        if not words:
            continue
        if len(words) != 2 or not _KEY_NAME.match(words[0]):
            raise BundleError(f"{path}:{number}: expected 'NAME BASE64-PUBLIC-KEY'")
        try:
            raw = base64.b64decode(words[1], validate=True)
            keys[words[0]] = Ed25519PublicKey.from_public_bytes(raw)
        except (binascii.Error, ValueError):
            raise BundleError(f"{path}:{number}: not base64 of a 32-byte Ed25519 public key") from None
    return keys


def public_key_text(key: Ed25519PrivateKey) -> str:
    from cryptography.hazmat.primitives import serialization

    raw = key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


# ------------------------------------------------------------------ reading and checking


def parse_manifest(data: bytes, key_id: str) -> Manifest:
    """The manifest's fields, checked for shape; BundleError naming the first problem."""
    try:
        doc = orjson.loads(data)
    except orjson.JSONDecodeError as exc:
        raise BundleError(f"manifest.json is not JSON: {exc}") from None
    if not isinstance(doc, dict) or doc.get("format") != FORMAT:
        raise BundleError(f"manifest.json: format must be {FORMAT}")
    try:
        version, python = str(doc["version"]), str(doc["python"])
        schema = doc["config_schema"]
        lo, hi = int(schema["min"]), int(schema["max"])
        outbox = int(doc["outbox_schema"])
        wheels = tuple(Wheel(str(w["file"]), str(w["sha256"]), int(w["size"])) for w in doc["wheels"])
    except (KeyError, TypeError, ValueError) as exc:
        raise BundleError(f"manifest.json: missing or malformed field {exc}") from None
    if not _VERSION.match(version):
        raise BundleError(f"manifest.json: version {version[:40]!r} is not a version")
    min_version = _min_version(doc.get("min_version"), version)
    if not wheels:
        raise BundleError("manifest.json lists no wheels")
    for wheel in wheels:
        if not _WHEEL_NAME.match(wheel.file) or not re.fullmatch(r"[0-9a-f]{64}", wheel.sha256):
            raise BundleError(f"manifest.json: wheel entry {wheel.file[:80]!r} is malformed")
    return Manifest(
        version, python, lo, hi, outbox, wheels, key_id, str(doc.get("created", "")), str(doc["name"]),
        min_version,
    )  # fmt: skip


def _min_version(value: Any, version: str) -> str | None:
    """The manifest's `min_version`, if it has one: a release version no higher than the release's
    own (a release that set a floor above itself would make its gateways refuse it)."""
    if value is None:
        return None
    try:
        if not isinstance(value, str):
            raise VersionError(value)
        floor = ReleaseVersion(value)
    except VersionError:
        raise BundleError(f"manifest.json: min_version {str(value)[:40]!r} is not {EXPECTED}") from None
    try:
        own = ReleaseVersion(version)
    except VersionError:
        raise BundleError(
            f"manifest.json: a release that sets min_version needs a version that can be compared "
            f"with it; {version[:40]!r} is not {EXPECTED}"
        ) from None
    if own < floor:
        raise BundleError(f"manifest.json: min_version {value} is above the release's own version {version}")
    return value


def verify_manifest(data: bytes, signature: bytes, keys: dict[str, Ed25519PublicKey]) -> Manifest:
    """The manifest if `signature` (manifest.sig) verifies with one of `keys`; BundleError otherwise."""
    if len(data) > MAX_MANIFEST_BYTES:
        raise BundleError("manifest.json is too large")
    try:
        sig = orjson.loads(signature)
        key_id, raw = str(sig["key_id"]), base64.b64decode(sig["sig"], validate=True)
    except (orjson.JSONDecodeError, KeyError, TypeError, binascii.Error, ValueError):
        raise BundleError('manifest.sig must be {"key_id": ..., "sig": "<base64>"}') from None
    key = keys.get(key_id)
    if key is None:
        known = ", ".join(sorted(keys)) or "none"
        raise BundleError(f"signed by {key_id[:64]!r}, which this gateway does not trust (trusted: {known})")
    try:
        key.verify(raw, SIGNING_DOMAIN + data)
    except InvalidSignature:
        raise BundleError(f"the manifest's signature does not verify with release key {key_id!r}") from None
    return parse_manifest(data, key_id)


def _leading(tar: tarfile.TarFile) -> dict[str, bytes]:
    """manifest.json and manifest.sig, which must be the bundle's first two members (`build_bundle`
    writes them first): no header behind them is read before the signature is checked (a bundle of
    max_bundle_bytes can hold a million, each a Python object once read)."""
    limits = {MANIFEST: MAX_MANIFEST_BYTES, SIGNATURE: 4096}
    found: dict[str, bytes] = {}
    while len(found) < len(limits):
        try:
            info = tar.next()
        except tarfile.TarError as exc:
            raise BundleError(f"the bundle is not a readable tar: {exc}") from None
        if info is None or info.name not in limits or info.name in found:
            raise BundleError(f"the bundle does not start with {MANIFEST} and {SIGNATURE}")
        limit = limits[info.name]
        if not info.isfile() or info.size > limit:
            raise BundleError(f"{info.name} in the bundle is not a regular file of at most {limit} bytes")
        handle = tar.extractfile(info)
        if handle is None:
            raise BundleError(f"cannot read {info.name} from the bundle")
        found[info.name] = handle.read()
    return found


def open_bundle(path: Path) -> tarfile.TarFile:
    try:
        return tarfile.open(path, "r:")
    except (OSError, tarfile.TarError) as exc:
        raise BundleError(f"{path} is not a release bundle (an uncompressed tar): {exc}") from None


def read_manifest(path: Path, keys: dict[str, Ed25519PublicKey]) -> Manifest:
    """Verify the bundle's signed manifest without unpacking anything else."""
    with open_bundle(path) as tar:
        leading = _leading(tar)
    return verify_manifest(leading[MANIFEST], leading[SIGNATURE], keys)


def extract_wheels(path: Path, manifest: Manifest, into: Path) -> list[str]:
    """Unpack the wheels the bundle carries into `into`, each checked against the manifest's
    size and sha256; the names of those carried. Anything not listed is refused, never unpacked."""
    listed = {w.file: w for w in manifest.wheels}
    carried: list[str] = []
    into.mkdir(parents=True, exist_ok=True)
    with open_bundle(path) as tar:
        for info in tar:
            if info.name in (MANIFEST, SIGNATURE) or (info.isdir() and info.name == WHEELS):
                continue
            folder, _, name = info.name.partition("/")
            wheel = listed.get(name)
            if folder != WHEELS or wheel is None or not info.isfile() or "/" in name:
                raise BundleError(f"the bundle carries {info.name[:80]!r}, which its manifest does not list")
            if info.size != wheel.size:
                raise BundleError(f"{name}: {info.size} bytes, the manifest says {wheel.size}")
            handle = tar.extractfile(info)
            if handle is None:
                raise BundleError(f"cannot read {name} from the bundle")
            digest = hashlib.sha256()
            with (into / name).open("wb") as out:
                while block := handle.read(1 << 20):
                    digest.update(block)
                    out.write(block)
            if digest.hexdigest() != wheel.sha256:
                (into / name).unlink()
                raise BundleError(f"{name}: sha256 does not match the signed manifest")
            carried.append(name)
    return carried


# ------------------------------------------------------------------ building (the release machine)


def _wheel_version(files: list[Path], name: str) -> str:
    prefix = name.replace("-", "_") + "-"
    for path in files:
        if path.name.startswith(prefix):
            return path.name[len(prefix) :].split("-", 1)[0]
    raise BundleError(f"no {name} wheel among the wheels given")


def build_bundle(
    packed: list[Path],
    cached: list[Path],
    key: Ed25519PrivateKey,
    key_id: str,
    out: Path,
    *,
    python: str,
    config_schema: tuple[int, int],
    outbox_schema: int,
    now: dt.datetime | None = None,
    min_version: str | None = None,
) -> Manifest:
    """Sign a manifest of `packed` + `cached` wheels and write the bundle with `packed` inside;
    `min_version`: the floor a gateway takes once it has committed the release (floor.py)."""
    if not _KEY_NAME.match(key_id):
        raise BundleError(f"key id {key_id!r} must be 1-64 letters, digits or '_.@-'")
    everything = sorted({*packed, *cached}, key=lambda p: p.name)
    names = [p.name for p in everything]
    if len(set(names)) != len(names):
        raise BundleError("two wheels with the same file name")
    created = (now or dt.datetime.now(dt.UTC)).strftime("%Y-%m-%dT%H:%M:%SZ")
    manifest = Manifest(
        version=_wheel_version(everything, "water-edge-agent"),
        python=python,
        config_schema_min=config_schema[0],
        config_schema_max=config_schema[1],
        outbox_schema=outbox_schema,
        wheels=tuple(Wheel(p.name, sha256_file(p), p.stat().st_size) for p in everything),
        key_id=key_id,
        created=created,
        min_version=min_version,
    )
    _min_version(min_version, manifest.version)  # never sign a floor a gateway would refuse
    data = orjson.dumps(manifest.to_json(), option=orjson.OPT_INDENT_2)
    sig = orjson.dumps({"key_id": key_id, "sig": base64.b64encode(key.sign(SIGNING_DOMAIN + data)).decode()})
    tmp = out.with_name(out.name + ".tmp")
    with tarfile.open(tmp, "w:", format=tarfile.PAX_FORMAT) as tar:
        for name, content in ((MANIFEST, data), (SIGNATURE, sig)):
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(content), 0o644
            tar.addfile(info, io.BytesIO(content))
        for path in sorted(packed, key=lambda p: p.name):
            tar.add(path, arcname=f"{WHEELS}/{path.name}", recursive=False)
    tmp.replace(out)
    return manifest

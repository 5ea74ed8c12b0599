"""Mode 7's AFL MAC: telegrams the simulator makes (written from the standard, independently of the
decoder) and the OMS specification's own example verify; a telegram altered so that its 2F 2F check
bytes still come out, a changed MAC, a MAC stripped off, a receiver-decrypted copy and MACs of a
kind that cannot be checked are refused with `MbusMacError`; a wrong key stays a wrong key."""

from __future__ import annotations

import json
from typing import Any

import pytest

from water_edge.agent.cli import main
from water_edge.drivers.mbus import crypto
from water_edge.drivers.mbus.crypto import MbusKeyError
from water_edge.drivers.mbus.records import parse_records
from water_edge.drivers.mbus.security import ALREADY_DECRYPTED, MbusEncryptedError, MbusMacError, mode7_key
from water_edge.drivers.wmbus.compact import FormatStore
from water_edge.drivers.wmbus.telegram import decode_wireless
from water_edge.sim import wmbus_encode as enc

KEY = bytes.fromhex("4A6F8B1C2D3E4F5061728394A5B6C7D8")
ADDRESS = enc.address("KAM", 52341234, 0x1B, 0x07)
COUNTER = 1000
VOLUME_L = 123_456
# Three blocks, the forward volume alone in the last: the 16 characters of a location string fill
# the middle block, so whoever garbles that block to change the volume garbles only text.
RECORDS = (
    b"\x04\x6d\x01\x0a\x81\x2c"  # date and time
    + b"\x01\xfd\x17\x00"  # error flags
    + b"\x0d\xfd\x11\x10" + b"FLAT 12, BLOCK A"  # location (LVAR 10h: 16 characters)
    + b"\x04\x13" + VOLUME_L.to_bytes(4, "little")
    + b"\x04\x93\x3c" + (0).to_bytes(4, "little")
)  # fmt: skip
AFL_START = 10  # L C M(2) A(6), then the AFL: CI 90h, its length, FCL(2) MCL MCR(4) MAC(8)
FCL_AT, MCL_AT, MCR_AT, MAC_AT = AFL_START + 2, AFL_START + 4, AFL_START + 5, AFL_START + 9
TPL_START = MAC_AT + 8
CIPHERTEXT_START = TPL_START + 6  # CI 7A, access, status, configuration field (2), its extension
OMS_EXAMPLE = bytes.fromhex(
    "434493157856341233038C2075900F002C25B30A000021924D4F2FB66E017A75002007109058475F4BC91DF878B8"
    "0A1B0F98B629024AAC727942BFC549233C0140829B93"
)  # OMS volume 2's example of security profile B, key 000102...0F
OMS_EXAMPLE_KEY = bytes(range(16))


def mode7(records: bytes = RECORDS) -> bytes:
    return enc.frame(ADDRESS, enc.tpl_mode7(ADDRESS, KEY, 0x42, 0, counter=COUNTER, records=records))


def decode(raw: bytes, key: bytes | None = KEY) -> dict[str, Any]:
    return decode_wireless(raw, key=key, formats=FormatStore()).to_dict()


def changed(raw: bytes, at: int, xor: int) -> bytes:
    out = bytearray(raw)
    out[at] ^= xor
    return bytes(out)


def with_afl(raw: bytes, fields: bytes) -> bytes:
    """`raw` (as `mode7` makes it, perhaps longer) with AFL `fields` (from the FCL on), its L field
    and AFL length to match."""
    body = raw[1:AFL_START] + bytes((0x90, len(fields))) + fields + raw[TPL_START:]
    return bytes((len(body),)) + body


def stripped(raw: bytes, how: str) -> bytes:
    """`raw` with its MAC taken away as an attacker would, so that the telegram still parses."""
    if how == "mac-bit-cleared-and-mac-removed":
        return with_afl(raw, (0x2000 | 0x0800).to_bytes(2, "little") + raw[MCL_AT:MAC_AT])
    if how == "authentication-type-0":
        return with_afl(raw, raw[FCL_AT:MCL_AT] + b"\x20" + raw[MCR_AT:TPL_START])
    body = raw[1:AFL_START] + raw[TPL_START:]  # no AFL at all
    return bytes((len(body),)) + body


def signed_afl(raw: bytes, *, mcl: int, mac_length: int, message_length: bool = False) -> bytes:
    """An AFL with MCL `mcl` and a MAC of `mac_length` bytes computed as EN 13757-7 gives it."""
    tpl = raw[TPL_START:]
    mcr = COUNTER.to_bytes(4, "little")
    ml = len(tpl).to_bytes(2, "little") if message_length else b""
    k_mac = enc.cmac_aes(KEY, b"\x01" + mcr + ADDRESS[2:6] + b"\x07" * 7)
    mac = enc.cmac_aes(k_mac, bytes((mcl,)) + mcr + ml + tpl)[:mac_length]
    fcl = 0x2000 | 0x0800 | 0x0400 | (0x1000 if message_length else 0)
    return with_afl(raw, fcl.to_bytes(2, "little") + bytes((mcl,)) + mcr + mac + ml)


def plaintext_before_the_mac_check(raw: bytes) -> bytes:
    """What the decoder made of a mode 7 telegram before it checked the MAC: decrypted, and trusted
    once the check bytes came out."""
    k_enc = mode7_key(KEY, COUNTER, ADDRESS[2:6])
    return crypto.cbc_decrypt(k_enc, bytes(16), raw[CIPHERTEXT_START:])


def test_a_telegram_of_the_simulator_verifies_and_decodes() -> None:
    raw = mode7()
    assert len(raw) - CIPHERTEXT_START == 48  # three blocks
    doc = decode(raw)
    assert doc["total_volume_m3"] == pytest.approx(VOLUME_L / 1000)
    assert doc["afl"] == {"fcl": 0x2C00, "more_fragments": False, "message_counter": COUNTER,
                          "mac": raw[MAC_AT:TPL_START].hex().upper()}  # fmt: skip


def test_the_oms_specification_example_verifies_and_a_changed_byte_does_not() -> None:
    assert decode(OMS_EXAMPLE, OMS_EXAMPLE_KEY)["total_volume_m3"] == pytest.approx(28504.27)
    with pytest.raises(MbusMacError, match="MAC does not match"):
        decode(changed(OMS_EXAMPLE, len(OMS_EXAMPLE) - 1, 0x01), OMS_EXAMPLE_KEY)


def test_a_volume_changed_through_the_block_before_it_is_refused() -> None:
    raw = mode7()
    # In CBC a bit flipped in ciphertext block 2 flips the same bit of plaintext block 3 (and
    # garbles block 2, the location text): the volume's third byte, 131.072 m3 more.
    volume_third_byte = 2 + 2  # after DIF and VIF, in the last block
    altered = changed(raw, CIPHERTEXT_START + 16 + volume_third_byte, 0x02)
    plain = plaintext_before_the_mac_check(altered)
    assert plain.startswith(b"\x2f\x2f")  # the check bytes do not see it
    records, _, _ = parse_records(plain)
    volume = next(r for r in records if r.quantity == "volume" and r.direction != "backward")
    assert volume.value == pytest.approx((VOLUME_L + 131_072) / 1000)  # what would have been stored
    with pytest.raises(MbusMacError, match="MAC does not match: the telegram was altered on the way"):
        decode(altered)


def test_data_after_the_encrypted_blocks_is_covered_too() -> None:
    flow = b"\x02\x3b" + (250).to_bytes(2, "little")  # a record in the clear after the blocks
    signed = signed_afl(mode7() + flow, mcl=0x25, mac_length=8)
    assert [r["value"] for r in decode(signed)["records"] if r["quantity"] == "volume_flow"] == [0.25]
    with pytest.raises(MbusMacError, match="does not match"):
        decode(changed(signed, len(signed) - 1, 0x01))


@pytest.mark.parametrize("offset", [0, 7])
def test_a_changed_mac_is_refused(offset: int) -> None:
    with pytest.raises(MbusMacError, match="MAC does not match"):
        decode(changed(mode7(), MAC_AT + offset, 0x80))


@pytest.mark.parametrize("how", ["mac-bit-cleared-and-mac-removed", "authentication-type-0", "no-afl"])
def test_a_telegram_whose_mac_was_stripped_is_refused(how: str) -> None:
    bare = stripped(mode7(), how)
    with pytest.raises(MbusEncryptedError, match="key is needed"):  # a mode 7 telegram as any other
        decode(bare, key=None)
    with pytest.raises(MbusMacError, match="without an AFL MAC: refused"):
        decode(bare)


def test_a_wrong_key_is_still_reported_as_a_wrong_key() -> None:
    wrong = bytes((KEY[0] ^ 1,)) + KEY[1:]
    with pytest.raises(MbusKeyError, match="wrong key") as caught:
        decode(mode7(), wrong)
    assert not isinstance(caught.value, MbusMacError)


@pytest.mark.parametrize(("authentication_type", "length"), [(3, 2), (4, 4), (5, 8), (6, 12), (7, 16)])
def test_each_cmac_length_the_authentication_type_gives_verifies(
    authentication_type: int, length: int
) -> None:
    signed = signed_afl(mode7(), mcl=0x20 | authentication_type, mac_length=length)
    assert decode(signed)["total_volume_m3"] == pytest.approx(VOLUME_L / 1000)
    with pytest.raises(MbusMacError, match="does not match"):
        decode(changed(signed, len(signed) - 1, 0x01))


def test_the_message_length_is_covered_when_the_afl_carries_it() -> None:
    signed = signed_afl(mode7(), mcl=0x65, mac_length=8, message_length=True)
    assert decode(signed)["total_volume_m3"] == pytest.approx(VOLUME_L / 1000)
    with pytest.raises(MbusMacError, match="does not match"):
        decode(changed(signed, TPL_START, 0x01))  # the ML's first byte, after the MAC


@pytest.mark.parametrize(
    ("mcl", "mac_length", "fragment"),
    [
        (0x28, 16, r"authentication type 8 \(AES-GCM\): not supported"),
        (0x21, 8, "authentication type 1, reserved: not supported"),
        (0x24, 8, "the AFL MAC has 8 bytes where its authentication type 4 gives 4"),
    ],
)
def test_a_mac_that_cannot_be_checked_is_refused(mcl: int, mac_length: int, fragment: str) -> None:
    with pytest.raises(MbusMacError, match=fragment):
        decode(signed_afl(mode7(), mcl=mcl, mac_length=mac_length))


def test_a_copy_a_receiver_decrypted_is_read_without_a_key_and_refused_with_one() -> None:
    raw = mode7()
    plain = raw[:CIPHERTEXT_START] + plaintext_before_the_mac_check(raw)
    doc = decode(plain, key=None)
    assert doc["total_volume_m3"] == pytest.approx(VOLUME_L / 1000)
    assert ALREADY_DECRYPTED in doc["notes"]
    with pytest.raises(MbusMacError, match=r"already decrypted .* refused while a key is configured"):
        decode(plain)


def test_cli_decode_wmbus_says_the_mac_does_not_match(capsys: pytest.CaptureFixture[str]) -> None:
    raw = mode7()
    assert main(["decode", "wmbus", raw.hex(), "--key", KEY.hex()]) == 0
    decoded = json.loads(capsys.readouterr().out)
    assert decoded["security"] == {"mode": 7, "decrypted": True, "authenticated": True}
    altered = changed(raw, len(raw) - 1, 0x01)
    assert main(["decode", "wmbus", altered.hex(), "--key", KEY.hex()]) == 2
    out, err = capsys.readouterr()
    assert out == ""
    assert err.startswith("edge-agent decode wmbus: security mode 7")
    assert "the AFL MAC does not match: the telegram was altered on the way or the key is wrong" in err

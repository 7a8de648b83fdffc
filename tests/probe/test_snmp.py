"""SNMP probe over a fake pysnmp engine: answers, timeouts, wrong v3 keys, malformed answers, secrets."""

from __future__ import annotations

import asyncio
import traceback
from collections.abc import Sequence
from typing import Any

import pytest
from pysnmp.error import PySnmpError
from pysnmp.proto import errind
from pysnmp.proto.rfc1902 import Integer32, ObjectIdentifier, OctetString
from pysnmp.proto.rfc1905 import NoSuchObject

from collectors import Kind
from collectors.probe import (
    SYSTEM_OIDS,
    ProbeAuthError,
    ProbeProtocolError,
    ProbeTimeout,
    PysnmpClient,
    Secret,
    SnmpCredential,
    async_probe_snmp,
    system_observations,
)
from fingerprints import default_index
from tests.probe.helpers import gate, outcomes

HOST = "127.0.0.30"
COMMUNITY = "s3cret-community-xyzzy"
AUTH_KEY = "auth-key-plugh-1234"
PRIV_KEY = "priv-key-frotz-5678"
V2C = SnmpCredential("2c", community=Secret(COMMUNITY))
V3 = SnmpCredential(
    "3",
    user=Secret("lanterne-user"),
    auth_protocol="sha",
    auth_key=Secret(AUTH_KEY),
    priv_protocol="aes",
    priv_key=Secret(PRIV_KEY),
)
SECRETS = (COMMUNITY, AUTH_KEY, PRIV_KEY, "lanterne-user")


def system_group(**values: object) -> tuple[tuple[ObjectIdentifier, Any], ...]:
    """Varbinds as pysnmp hands them back with lookupMib=False."""
    answer = []
    for name, oid in SYSTEM_OIDS.items():
        value = values.get(name, NoSuchObject(""))
        answer.append((ObjectIdentifier(oid), value))
    return tuple(answer)


class FakeEngine:
    """Stands for pysnmp's SnmpEngine: remembers that it was closed."""

    def __init__(self) -> None:
        self.closed = False

    def close_dispatcher(self) -> None:
        self.closed = True


class FakeCommand:
    """Stands for pysnmp's get_cmd: answers per credential, records what it was asked."""

    def __init__(self, answers: dict[str, Any]) -> None:
        self.answers = answers
        self.calls: list[tuple[str, str, int]] = []

    async def __call__(
        self, engine: FakeEngine, auth: Any, target: Any, context: Any, *varbinds: Any, **options: Any
    ) -> Any:
        assert options == {"lookupMib": False}
        assert varbinds
        version = "3" if type(auth).__name__ == "UsmUserData" else "2c"
        host, port = target.transport_address
        assert target.retries == 0  # the gate retries, not pysnmp
        self.calls.append((version, host, port))
        answer = self.answers[version]
        if isinstance(answer, BaseException):
            raise answer
        return answer


def probe(
    answers: dict[str, Any], credentials: Sequence[SnmpCredential] = (V3, V2C), **options: object
) -> tuple[Any, ...]:
    the_gate, records = gate(**options)
    engine = FakeEngine()
    command = FakeCommand(answers)
    client = PysnmpClient(engine_factory=lambda: engine, command=command)

    async def main() -> Any:
        try:
            return await async_probe_snmp(
                the_gate, client, HOST, credentials, mac="00:12:21:aa:bb:cc", agent="test"
            )
        finally:
            await client.aclose()

    found = asyncio.run(main())
    assert engine.closed
    return found, records, command.calls


OK = (
    None,
    Integer32(0),
    Integer32(0),
    system_group(
        descr=OctetString(b"Lab pump gateway v1.2\x00"),
        object_id=ObjectIdentifier("1.3.6.1.4.1.22447.1.2"),
        name=OctetString(b"pump-gw-3"),
        contact=OctetString(b"biomed"),
        location=OctetString(b"Bloc B"),
    ),
)


def assert_no_secret(*texts: object) -> None:
    for text in texts:
        for secret in SECRETS:
            assert secret not in str(text)


def test_an_answer_becomes_the_device_s_observations() -> None:
    found, records, calls = probe({"3": OK, "2c": OK})
    assert calls == [("3", HOST, 161)]  # the first credential answered: no other tried
    kinds = {str(obs.kind): obs for obs in found}
    assert kinds["snmp.sysdescr"].value == "Lab pump gateway v1.2"
    assert kinds["snmp.sysobjectid"].value == "1.3.6.1.4.1.22447.1.2"
    assert kinds["snmp.sysname"].value == "pump-gw-3"
    for obs in found:
        # The device announced itself: src, as the passive SNMP parser reports it.
        assert (obs.src.ip, obs.src.mac, obs.src.port, obs.source) == (
            HOST,
            "00:12:21:aa:bb:cc",
            161,
            "probe.snmp",
        )
        assert obs.attrs == {
            "version": "v3",
            "pdu": "get-response",
            "location": "Bloc B",
            "contact": "biomed",
        }
    (record,) = records
    assert record.detail.startswith(
        "SNMPv3 authPriv SHA/AES (credential 1) GET sysDescr.0 sysObjectID.0 sysName.0 "
        "sysContact.0 sysLocation.0"
    )
    assert "answered: contact, descr, location, name, object_id" in record.detail


def test_the_matcher_names_the_maker_from_the_sysobjectid() -> None:
    found, _, _ = probe({"3": OK, "2c": OK})
    index = default_index()
    (sysobjectid,) = [obs for obs in found if obs.kind is Kind.SNMP_SYSOBJECTID]
    (detection,) = index.assess_all(index.match(sysobjectid))
    assert (detection.product_id, str(detection.category)) == ("b-braun", "medical_device")


def test_timeouts_retry_then_a_silent_v3_engine_skips_the_other_v3_users() -> None:
    timeout = (errind.requestTimedOut, 0, 0, ())
    second_v3 = SnmpCredential(
        "3", user=Secret("other"), auth_protocol="sha", auth_key=Secret("another-key-123")
    )
    found, records, calls = probe({"3": timeout, "2c": timeout}, (V3, second_v3, V2C))
    assert found == []
    assert [version for version, *_ in calls] == ["3", "3", "2c", "2c"]
    assert outcomes(records) == ["timeout"] * 4
    assert "no answer (for SNMPv3 authPriv: no agent, or a wrong privacy key)" in records[0].detail
    assert "no answer (no agent, or the community was refused)" in records[2].detail


@pytest.mark.parametrize(
    "indication", [errind.wrongDigest, errind.unknownUserName, errind.decryptionError, errind.notInTimeWindow]
)
def test_wrong_v3_keys_are_auth_failures_not_retried(indication: errind.ErrorIndication) -> None:
    found, records, calls = probe({"3": (indication, 0, 0, ()), "2c": OK})
    assert outcomes(records) == ["auth_failed", "ok"]
    assert f"credentials refused ({type(indication).__name__})" in records[0].detail
    assert [version for version, *_ in calls] == ["3", "2c"]
    assert {obs.attrs["version"] for obs in found} == {"v2c"}


@pytest.mark.parametrize(
    ("answer", "message"),
    [
        ((errind.parseError, 0, 0, ()), "malformed answer (ParseError)"),
        ((None, 0, 0, system_group()), "the answer carries no system group value"),
        (
            (None, 0, 0, ((ObjectIdentifier("1.3.6.1.2.1.1.2.0"), OctetString(b"not an oid")),)),
            "no system group",
        ),
        ((None, 0, 0, (("garbage",),)), "no system group"),
        ((None, Integer32(5), Integer32(1), ()), "error-status"),
        (PySnmpError("Bad IPv4/UDP transport address"), "the SNMP engine could not send or read the request"),
    ],
)
def test_malformed_answers(answer: Any, message: str) -> None:
    found, records, _ = probe({"3": answer, "2c": answer}, (V2C,))
    assert found == []
    assert outcomes(records) == ["malformed"]
    assert message in records[0].detail


def test_an_unexpected_indication_is_an_error() -> None:
    _, records, _ = probe({"2c": (errind.loopTerminated, 0, 0, ())}, (V2C,))
    assert outcomes(records) == ["error"]


def test_secrets_never_reach_records_exceptions_or_reprs() -> None:
    failures: list[BaseException] = []

    async def collect(indication: Any) -> None:
        client = PysnmpClient(
            engine_factory=FakeEngine, command=FakeCommand({"3": indication, "2c": indication})
        )
        for credential in (V3, V2C):
            try:
                await client.get(HOST, 161, credential, tuple(SYSTEM_OIDS.values()), 1.0)
            except (ProbeTimeout, ProbeAuthError, ProbeProtocolError) as exc:
                failures.append(exc)

    for indication in (
        (errind.requestTimedOut, 0, 0, ()),
        (errind.wrongDigest, 0, 0, ()),
        PySnmpError(f"boom {COMMUNITY}"),  # even a library message quoting it stays out of ours
    ):
        asyncio.run(collect(indication))
    assert len(failures) == 6
    for failure in failures:
        assert_no_secret(str(failure), repr(failure))
    _, records, _ = probe({"3": (errind.wrongDigest, 0, 0, ()), "2c": (errind.requestTimedOut, 0, 0, ())})
    assert_no_secret(*(record.detail for record in records))
    assert_no_secret(repr(V2C), repr(V3), str(V3.auth_key), V3.describe(1), V2C.describe(2))


def test_the_library_error_stays_chained_for_debugging_but_out_of_the_message() -> None:
    client = PysnmpClient(engine_factory=FakeEngine, command=FakeCommand({"2c": PySnmpError("detail")}))
    with pytest.raises(ProbeProtocolError) as caught:
        asyncio.run(client.get(HOST, 161, V2C, ("1.3.6.1.2.1.1.1.0",), 1.0))
    assert isinstance(caught.value.__cause__, PySnmpError)
    assert "detail" not in str(caught.value)
    assert "ProbeProtocolError" in "".join(traceback.format_exception(caught.value))


@pytest.mark.parametrize(
    ("options", "message"),
    [
        ({"version": "2c"}, "community"),
        ({"version": "3"}, "user"),
        ({"version": "3", "user": Secret("u"), "auth_key": Secret("12345678")}, "protocol and a key"),
        (
            {"version": "3", "user": Secret("u"), "auth_protocol": "sha", "auth_key": Secret("short")},
            "8 characters",
        ),
        (
            {"version": "3", "user": Secret("u"), "auth_protocol": "rot13", "auth_key": Secret("12345678")},
            "unknown",
        ),
        (
            {"version": "3", "user": Secret("u"), "priv_protocol": "aes", "priv_key": Secret("12345678")},
            "privacy needs",
        ),
    ],
)
def test_credential_checks(options: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as caught:
        SnmpCredential(**options)
    assert_no_secret(str(caught.value))


def test_secret_hides_itself() -> None:
    secret = Secret(COMMUNITY)
    assert COMMUNITY not in f"{secret} {secret!r} {[secret]}"
    assert secret.reveal() == COMMUNITY
    assert secret == Secret(COMMUNITY)
    assert hash(secret) == hash(Secret(COMMUNITY))
    with pytest.raises(ValueError, match="empty"):
        Secret("")


def test_real_pysnmp_auth_data_is_built_without_error() -> None:
    from collectors.probe._snmp import _auth_data  # the one place secrets meet pysnmp

    for credential in (V2C, V3, SnmpCredential("3", user=Secret("u"))):
        assert COMMUNITY not in repr(_auth_data(credential))


def test_system_observations_skip_what_is_missing() -> None:
    found = system_observations({"name": "only-name"}, HOST, version="v2c", ts=1.0)
    assert [(str(obs.kind), obs.value) for obs in found] == [("snmp.sysname", "only-name")]

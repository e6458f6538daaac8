#!/usr/bin/env python3
"""Interop referee: provisions devices against `station emulate` (or any AWS IoT endpoint)
with the official AWS IoT Device SDK for Python (`awsiotsdk`) and judges every answer.

Each case opens its own MQTT connection with the claim certificate, runs one
fleet-provisioning flow and checks the response contents against what AWS documents
(docs/reference: fleet-provision-api, the SDK's iotidentity models). One line per case:

    PASS mqtt3-csr (0.21 s): ...
    FAIL mqtt5-csr (0.05 s): MQTT 5 CONNECT failed: ...

and a closing `N passed, M failed` line. Exit status: 0 if every selected case passed,
1 if any failed, 2 for bad arguments.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import os
import queue
import re
import sys
import tempfile
import time
import traceback
import uuid
from dataclasses import dataclass
from typing import Callable

import cbor2
from awscrt import exceptions as crt_exceptions
from awscrt import io, mqtt, mqtt5, mqtt_request_response
from awsiot import V2ServiceException, iotidentity, mqtt5_client_builder, mqtt_connection_builder
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import NameOID

QOS1 = mqtt.QoS.AT_LEAST_ONCE

# What the fixtures' templates give back (fixtures/templates/*.json; docs/aws-fleet-provisioning.md §3.7 (a), (c)).
LOCATION_CONFIG = {
    "FallbackUrl": "https://www.example.com/test-site",
    "LocationUrl": "https://example.aws",  # Fn::FindInMap LocationTable/Seattle/LocationUrl
}


@dataclass(frozen=True)
class TemplateUse:
    """How to call a known template and what it must answer."""

    parameters: Callable[[str], dict]
    thing_name: Callable[[str], str]
    device_configuration: dict
    allows_device_connect: bool


# The template of the device-conditions case (fixtures/templates/AttachedThingTemplate.json): its
# policy allows iot:Connect on client/${iot:Connection.Thing.ThingName} if the certificate is attached
# to the thing (Bool iot:Connection.Thing.IsAttached), and publish on lines/<the thing's line attribute>/*.
ATTACHED_TEMPLATE = "AttachedThingTemplate"
ATTACHED_LINE = "L1"

TEMPLATES = {
    # ThingName = Ref ThingName; policy allows only iot:Publish on foo/bar.
    "FleetTemplate": TemplateUse(
        parameters=lambda s: {"ThingName": f"interop-{s}", "SerialNumber": s, "DeviceLocation": "Seattle"},
        thing_name=lambda s: f"interop-{s}",
        device_configuration=LOCATION_CONFIG,
        allows_device_connect=False,
    ),
    # ThingName = ThingPrefix_<SerialNumber>; policy allows iot:Connect/Subscribe/Publish/Receive on *.
    "PySampleTemplate": TemplateUse(
        parameters=lambda s: {"SerialNumber": s, "DeviceLocation": "Seattle"},
        thing_name=lambda s: f"ThingPrefix_{s}",
        device_configuration=LOCATION_CONFIG,
        allows_device_connect=True,
    ),
    # ThingName = att_<SerialNumber>, attribute line = Line; policy with conditions (see ATTACHED_TEMPLATE).
    ATTACHED_TEMPLATE: TemplateUse(
        parameters=lambda s: {"SerialNumber": s, "Line": ATTACHED_LINE},
        thing_name=lambda s: f"att_{s}",
        device_configuration={},
        allows_device_connect=True,
    ),
}

CERT_ID = re.compile(r"^[0-9a-f]{64}$")
EMPTY_TOKEN_MESSAGE = "Certificate ownership token cannot be empty."  # OBSERVED, docs/aws-fleet-provisioning.md §1.2


class CaseFailure(Exception):
    """A check failed; the message is the reason printed on the FAIL line."""


def check(condition: bool, reason: str) -> None:
    if not condition:
        raise CaseFailure(reason)


def describe(err: BaseException | None) -> str:
    """One line for an exception from awscrt / awsiot, with the CRT error name."""
    if err is None:
        return "no error"
    if isinstance(err, crt_exceptions.AwsCrtError):
        return f"{err.name} ({err.message})"
    if isinstance(err, V2ServiceException):
        if err.modeled_error is not None:
            return f"{err.message}: rejected {describe_error_response(err.modeled_error)}"
        return f"{err.message}: {describe(err.inner_error)}"
    if isinstance(err, concurrent.futures.TimeoutError):
        return "timed out"
    return f"{type(err).__name__}: {err}"


def describe_error_response(e) -> str:
    return f"statusCode={e.status_code!r} errorCode={e.error_code!r} errorMessage={e.error_message!r}"


# ---------------------------------------------------------------------------------------------
# Run context


class Ctx:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        self.timeout = args.timeout
        self.run_id = uuid.uuid4().hex[:8]
        self.verbose = args.verbose
        self.template = args.template
        self.device_template = args.device_template

    def serial(self, tag: str) -> str:
        """A serial number unique to this run and case, so reruns never collide."""
        return f"{self.run_id}-{tag}"

    def client_id(self, tag: str) -> str:
        return f"interop-{self.run_id}-{tag}"

    def log(self, msg: str) -> None:
        if self.verbose:
            print(f"    {msg}", file=sys.stderr, flush=True)

    def wait(self, fut: concurrent.futures.Future, what: str):
        """Result of `fut` within the timeout, or a CaseFailure naming `what`."""
        try:
            return fut.result(timeout=self.timeout)
        except concurrent.futures.TimeoutError:
            raise CaseFailure(f"no {what} within {self.timeout:g} s") from None
        except CaseFailure:
            raise
        except Exception as e:  # noqa: BLE001 - reported, not swallowed
            raise CaseFailure(f"{what} failed: {describe(e)}") from e


# ---------------------------------------------------------------------------------------------
# MQTT sessions


class Mqtt3Session:
    """An awscrt MQTT 3.1.1 connection built with mqtt_connection_builder (mTLS)."""

    def __init__(self, ctx: Ctx, client_id: str, *, cert_path=None, key_path=None,
                 cert_pem: bytes | None = None, key_pem: bytes | None = None):
        self.ctx = ctx
        self.client_id = client_id
        self.interruptions: list[str] = []
        common = dict(
            endpoint=ctx.args.endpoint,
            port=ctx.args.port,
            ca_filepath=ctx.args.ca_file,
            client_id=client_id,
            clean_session=True,
            keep_alive_secs=60,
            protocol_operation_timeout_ms=int(ctx.timeout * 1000),
            tcp_connect_timeout_ms=int(ctx.timeout * 1000),
            on_connection_interrupted=self._on_interrupted,
        )
        if cert_pem is not None:
            self.connection = mqtt_connection_builder.mtls_from_bytes(
                cert_bytes=cert_pem, pri_key_bytes=key_pem, **common)
        else:
            self.connection = mqtt_connection_builder.mtls_from_path(
                cert_filepath=cert_path, pri_key_filepath=key_path, **common)
        self.connected = False

    def _on_interrupted(self, connection, error, **kwargs):
        self.interruptions.append(describe(error))
        self.ctx.log(f"[{self.client_id}] connection interrupted: {describe(error)}")

    def __enter__(self) -> "Mqtt3Session":
        try:
            result = self.ctx.wait(self.connection.connect(), "CONNACK (MQTT 3.1.1)")
        except CaseFailure as e:
            raise CaseFailure(f"MQTT 3.1.1 CONNECT as {self.client_id!r}: {e}") from None
        self.connected = True
        self.ctx.log(f"[{self.client_id}] connected (MQTT 3.1.1), session_present={result['session_present']}")
        check(result["session_present"] is False,
              "CONNACK has session present = 1 for a clean session")
        return self

    def __exit__(self, *exc) -> None:
        if self.connected:
            try:
                self.connection.disconnect().result(timeout=self.ctx.timeout)
            except Exception as e:  # noqa: BLE001
                self.ctx.log(f"[{self.client_id}] disconnect: {describe(e)}")

    def context(self) -> str:
        """Extra detail for a failure reason: connection losses seen so far."""
        if self.interruptions:
            return f" (connection interrupted: {'; '.join(self.interruptions)})"
        return ""


class Mqtt5Session:
    """An awscrt MQTT 5 client built with mqtt5_client_builder (mTLS)."""

    def __init__(self, ctx: Ctx, client_id: str, *, cert_path: str, key_path: str,
                 on_publish: Callable[[mqtt5.PublishReceivedData], None] | None = None):
        self.ctx = ctx
        self.client_id = client_id
        self.connected: concurrent.futures.Future = concurrent.futures.Future()
        self.stopped: concurrent.futures.Future = concurrent.futures.Future()
        self.disconnections: list[str] = []
        extra = {} if on_publish is None else {"on_publish_received": on_publish}
        self.client = mqtt5_client_builder.mtls_from_path(
            endpoint=ctx.args.endpoint,
            port=ctx.args.port,
            cert_filepath=cert_path,
            pri_key_filepath=key_path,
            ca_filepath=ctx.args.ca_file,
            client_id=client_id,
            keep_alive_interval_sec=60,
            connack_timeout_ms=int(ctx.timeout * 1000),
            ack_timeout_sec=max(1, round(ctx.timeout)),
            on_lifecycle_connection_success=self._on_success,
            on_lifecycle_connection_failure=self._on_failure,
            on_lifecycle_disconnection=self._on_disconnection,
            on_lifecycle_stopped=self._on_stopped,
            **extra,
        )
        self.started = False

    def _on_success(self, event: mqtt5.LifecycleConnectSuccessData):
        if not self.connected.done():
            self.connected.set_result(event)

    def _on_failure(self, event: mqtt5.LifecycleConnectFailureData):
        reason = describe(event.exception)
        if event.connack_packet is not None:
            c = event.connack_packet
            reason += f"; CONNACK reason code {c.reason_code!r}, reason string {c.reason_string!r}"
        self.ctx.log(f"[{self.client_id}] MQTT 5 connection failure: {reason}")
        if not self.connected.done():
            self.connected.set_exception(CaseFailure(reason))

    def _on_disconnection(self, event: mqtt5.LifecycleDisconnectData):
        reason = describe(event.exception)
        if event.disconnect_packet is not None:
            reason += f"; DISCONNECT reason code {event.disconnect_packet.reason_code!r}"
        self.disconnections.append(reason)
        self.ctx.log(f"[{self.client_id}] MQTT 5 disconnection: {reason}")

    def _on_stopped(self, event):
        if not self.stopped.done():
            self.stopped.set_result(True)

    def __enter__(self) -> "Mqtt5Session":
        self.client.start()
        self.started = True
        try:
            event = self.connected.result(timeout=self.ctx.timeout)
        except concurrent.futures.TimeoutError:
            self._stop()
            raise CaseFailure(f"MQTT 5 CONNECT as {self.client_id!r}: no CONNACK within {self.ctx.timeout:g} s") from None
        except CaseFailure as e:
            self._stop()
            raise CaseFailure(f"MQTT 5 CONNECT as {self.client_id!r} failed: {e}") from None
        c = event.connack_packet
        self.ctx.log(f"[{self.client_id}] connected (MQTT 5), CONNACK reason {c.reason_code!r}, "
                     f"session_present={c.session_present}")
        return self

    def _stop(self) -> None:
        if self.started:
            self.started = False
            self.client.stop()
            try:
                self.stopped.result(timeout=self.ctx.timeout)
            except Exception as e:  # noqa: BLE001
                self.ctx.log(f"[{self.client_id}] stop: {describe(e)}")

    def __exit__(self, *exc) -> None:
        self._stop()

    def context(self) -> str:
        if self.disconnections:
            return f" (disconnected: {'; '.join(self.disconnections)})"
        return ""


# ---------------------------------------------------------------------------------------------
# V1 IotIdentityClient: explicit subscribe to accepted/rejected, then QoS 1 publish


class V1Operation:
    """One fleet-provisioning operation through the V1 client: its accepted and rejected
    subscriptions (made once, SUBACK awaited) and a call that publishes and waits."""

    def __init__(self, ctx: Ctx, session: Mqtt3Session, name: str, subscribe_accepted, subscribe_rejected):
        self.ctx = ctx
        self.session = session
        self.name = name
        self.replies: queue.Queue = queue.Queue()
        for kind, subscribe in (("accepted", subscribe_accepted), ("rejected", subscribe_rejected)):
            fut, topic = subscribe(QOS1, lambda event, kind=kind: self.replies.put((kind, event)))
            granted = ctx.wait(fut, f"SUBACK for {topic}")
            check(granted == QOS1, f"SUBACK for {topic} granted {granted!r}, expected QoS 1")

    def call(self, publish):
        """Publishes at QoS 1 (waits for PUBACK) and returns ('accepted'|'rejected', event)."""
        while not self.replies.empty():
            self.replies.get_nowait()
        fut = publish(QOS1)
        try:
            self.ctx.wait(fut, f"PUBACK for the {self.name} request")
        except CaseFailure as e:
            raise CaseFailure(f"{e}{self.session.context()}") from None
        try:
            kind, event = self.replies.get(timeout=self.ctx.timeout)
        except queue.Empty:
            raise CaseFailure(f"no {self.name} accepted/rejected reply within {self.ctx.timeout:g} s"
                              f"{self.session.context()}") from None
        check(event is not None, f"{self.name} {kind} reply is not a JSON object the SDK can read")
        return kind, event

    def expect_accepted(self, publish):
        kind, event = self.call(publish)
        if kind == "rejected":
            raise CaseFailure(f"{self.name} rejected: {describe_error_response(event)}")
        return event


def v1_client(session: Mqtt3Session) -> iotidentity.IotIdentityClient:
    return iotidentity.IotIdentityClient(session.connection)


def v1_create_from_csr(ctx, session, client) -> V1Operation:
    req = iotidentity.CreateCertificateFromCsrSubscriptionRequest()
    return V1Operation(
        ctx, session, "CreateCertificateFromCsr",
        lambda qos, cb: client.subscribe_to_create_certificate_from_csr_accepted(req, qos, cb),
        lambda qos, cb: client.subscribe_to_create_certificate_from_csr_rejected(req, qos, cb))


def v1_create_keys(ctx, session, client) -> V1Operation:
    req = iotidentity.CreateKeysAndCertificateSubscriptionRequest()
    return V1Operation(
        ctx, session, "CreateKeysAndCertificate",
        lambda qos, cb: client.subscribe_to_create_keys_and_certificate_accepted(req, qos, cb),
        lambda qos, cb: client.subscribe_to_create_keys_and_certificate_rejected(req, qos, cb))


def v1_register(ctx, session, client, template: str) -> V1Operation:
    req = iotidentity.RegisterThingSubscriptionRequest(template_name=template)
    return V1Operation(
        ctx, session, "RegisterThing",
        lambda qos, cb: client.subscribe_to_register_thing_accepted(req, qos, cb),
        lambda qos, cb: client.subscribe_to_register_thing_rejected(req, qos, cb))


def register_request(template: str, token: str, parameters: dict | None) -> iotidentity.RegisterThingRequest:
    return iotidentity.RegisterThingRequest(
        template_name=template, certificate_ownership_token=token, parameters=parameters)


# ---------------------------------------------------------------------------------------------
# V2 request-response client


def v2_client(ctx: Ctx, protocol_client) -> iotidentity.IotIdentityClientV2:
    # The SDK samples' settings: two request-response subscription slots, so the client must
    # UNSUBSCRIBE the create/* pair before it can SUBSCRIBE the provision/* pair.
    options = mqtt_request_response.ClientOptions(
        max_request_response_subscriptions=2,
        max_streaming_subscriptions=0,
        operation_timeout_in_seconds=max(1, round(ctx.timeout)),
    )
    return iotidentity.IotIdentityClientV2(protocol_client, options)


def v2_result(ctx: Ctx, fut: concurrent.futures.Future, op: str, session):
    """('accepted', response) or ('rejected', V2ErrorResponse); other failures are CaseFailures."""
    try:
        return "accepted", fut.result(timeout=ctx.timeout + 5)
    except V2ServiceException as e:
        if e.modeled_error is not None:
            return "rejected", e.modeled_error
        raise CaseFailure(f"{op}: {describe(e)}{session.context()}") from None
    except concurrent.futures.TimeoutError:
        raise CaseFailure(f"{op}: no result within {ctx.timeout + 5:g} s{session.context()}") from None


def v2_expect_accepted(ctx, fut, op, session):
    kind, value = v2_result(ctx, fut, op, session)
    if kind == "rejected":
        raise CaseFailure(f"{op} rejected: {describe_error_response(value)}")
    return value


# ---------------------------------------------------------------------------------------------
# Checks on response contents


def make_csr(common_name: str):
    """A P-256 key and a PEM CSR for it (the station's own key type)."""
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return key, csr.public_bytes(serialization.Encoding.PEM).decode()


def spki(public_key) -> bytes:
    return public_key.public_bytes(serialization.Encoding.DER,
                                   serialization.PublicFormat.SubjectPublicKeyInfo)


def check_issued(cert_id, cert_pem, token, *, expected_key=None) -> x509.Certificate:
    """certificateId, certificatePem and certificateOwnershipToken of a Create* accepted reply."""
    check(isinstance(cert_id, str) and CERT_ID.match(cert_id) is not None,
          f"certificateId {cert_id!r} is not 64 lowercase hex characters")
    check(isinstance(token, str) and token != "", f"certificateOwnershipToken is {token!r}")
    check(isinstance(cert_pem, str) and "-----BEGIN CERTIFICATE-----" in cert_pem,
          "certificatePem is not a PEM certificate")
    try:
        cert = x509.load_pem_x509_certificate(cert_pem.encode())
    except ValueError as e:
        raise CaseFailure(f"certificatePem does not parse: {e}") from None
    if expected_key is not None:
        check(spki(cert.public_key()) == spki(expected_key),
              "certificatePem does not certify the CSR's public key")
    return cert


def check_private_key(private_key_pem, cert: x509.Certificate) -> str:
    """privateKey of CreateKeysAndCertificate: a PEM RSA-2048 key (API-CreateKeysAndCertificate)
    whose public half is the certificate's. Returns its PEM label for the report."""
    check(isinstance(private_key_pem, str) and "PRIVATE KEY-----" in private_key_pem,
          "privateKey is not a PEM private key")
    try:
        key = serialization.load_pem_private_key(private_key_pem.encode(), password=None)
    except (ValueError, TypeError) as e:
        raise CaseFailure(f"privateKey does not parse: {e}") from None
    check(isinstance(key, rsa.RSAPrivateKey) and key.key_size == 2048,
          f"privateKey is {type(key).__name__} of {getattr(key, 'key_size', '?')} bits, expected RSA 2048")
    check(spki(key.public_key()) == spki(cert.public_key()),
          "privateKey does not match certificatePem's public key")
    return private_key_pem.strip().splitlines()[0]


def check_registered(ctx: Ctx, template: str, serial: str, thing_name, device_configuration) -> str:
    use = TEMPLATES[template]
    expected = use.thing_name(serial)
    check(thing_name == expected, f"thingName is {thing_name!r}, {template} gives {expected!r}")
    check(device_configuration == use.device_configuration,
          f"deviceConfiguration is {device_configuration!r}, {template} gives {use.device_configuration!r}")
    return expected


def check_token_rejection(kind, err, what: str, *, empty_token: bool) -> None:
    check(kind == "rejected", f"RegisterThing with {what} was accepted")
    check(err.status_code == 400 and type(err.status_code) is int,
          f"RegisterThing with {what}: statusCode {err.status_code!r}, expected integer 400")
    check(err.error_code == "InvalidCertificateOwnershipToken",
          f"RegisterThing with {what}: errorCode {err.error_code!r}, expected 'InvalidCertificateOwnershipToken'")
    check(isinstance(err.error_message, str) and err.error_message != "",
          f"RegisterThing with {what}: errorMessage {err.error_message!r}")
    if empty_token:
        check(err.error_message == EMPTY_TOKEN_MESSAGE,
              f"RegisterThing with {what}: errorMessage {err.error_message!r}, AWS says {EMPTY_TOKEN_MESSAGE!r}")


def never_issued_token() -> str:
    return uuid.uuid4().hex * 3


# ---------------------------------------------------------------------------------------------
# Cases: MQTT 3.1.1 + V1 IotIdentityClient


def case_mqtt3_keys(ctx: Ctx) -> str:
    serial = ctx.serial("m3keys")
    with Mqtt3Session(ctx, ctx.client_id("m3keys"), cert_path=ctx.args.cert, key_path=ctx.args.key) as s:
        client = v1_client(s)
        create = v1_create_keys(ctx, s, client)
        register = v1_register(ctx, s, client, ctx.template)
        resp = create.expect_accepted(lambda qos: client.publish_create_keys_and_certificate(
            iotidentity.CreateKeysAndCertificateRequest(), qos))
        cert = check_issued(resp.certificate_id, resp.certificate_pem, resp.certificate_ownership_token)
        label = check_private_key(resp.private_key, cert)
        reg = register.expect_accepted(lambda qos: client.publish_register_thing(register_request(
            ctx.template, resp.certificate_ownership_token, TEMPLATES[ctx.template].parameters(serial)), qos))
        thing = check_registered(ctx, ctx.template, serial, reg.thing_name, reg.device_configuration)
    return f"certificate {resp.certificate_id[:12]}…, key {label}, thing {thing}"


def case_mqtt3_csr(ctx: Ctx) -> str:
    serial = ctx.serial("m3csr")
    key, csr = make_csr(serial)
    with Mqtt3Session(ctx, ctx.client_id("m3csr"), cert_path=ctx.args.cert, key_path=ctx.args.key) as s:
        client = v1_client(s)
        create = v1_create_from_csr(ctx, s, client)
        register = v1_register(ctx, s, client, ctx.template)
        resp = create.expect_accepted(lambda qos: client.publish_create_certificate_from_csr(
            iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr), qos))
        check_issued(resp.certificate_id, resp.certificate_pem, resp.certificate_ownership_token,
                     expected_key=key.public_key())
        reg = register.expect_accepted(lambda qos: client.publish_register_thing(register_request(
            ctx.template, resp.certificate_ownership_token, TEMPLATES[ctx.template].parameters(serial)), qos))
        thing = check_registered(ctx, ctx.template, serial, reg.thing_name, reg.device_configuration)
    return f"certificate {resp.certificate_id[:12]}…, thing {thing}, deviceConfiguration as the template says"


def case_mqtt3_rejected(ctx: Ctx) -> str:
    serial = ctx.serial("m3rej")
    params = TEMPLATES[ctx.template].parameters(serial)
    with Mqtt3Session(ctx, ctx.client_id("m3rej"), cert_path=ctx.args.cert, key_path=ctx.args.key) as s:
        client = v1_client(s)
        register = v1_register(ctx, s, client, ctx.template)
        kind, err = register.call(lambda qos: client.publish_register_thing(
            register_request(ctx.template, never_issued_token(), params), qos))
        check_token_rejection(kind, err, "a never-issued token", empty_token=False)
        kind, err = register.call(lambda qos: client.publish_register_thing(
            register_request(ctx.template, "", params), qos))
        check_token_rejection(kind, err, "an empty token", empty_token=True)
    return "never-issued and empty tokens: 400 InvalidCertificateOwnershipToken"


# ---- CBOR: raw publish/subscribe on the .../cbor topics (the SDK's identity client is JSON-only)


class CborOperation:
    """Raw CBOR request/reply on `<request topic>` and its accepted/rejected topics."""

    def __init__(self, ctx: Ctx, session: Mqtt3Session, name: str, request_topic: str):
        self.ctx, self.session, self.name, self.topic = ctx, session, name, request_topic
        self.replies: queue.Queue = queue.Queue()
        for kind in ("accepted", "rejected"):
            topic = f"{request_topic}/{kind}"
            fut, _ = session.connection.subscribe(
                topic, QOS1, callback=lambda topic, payload, **kw: self.replies.put((topic, payload)))
            granted = ctx.wait(fut, f"SUBACK for {topic}")["qos"]
            check(granted == QOS1, f"SUBACK for {topic} granted {granted!r}, expected QoS 1")

    def call(self, request: dict) -> tuple[str, bytes, dict]:
        while not self.replies.empty():
            self.replies.get_nowait()
        fut, _ = self.session.connection.publish(self.topic, cbor2.dumps(request), QOS1)
        self.ctx.wait(fut, f"PUBACK for the CBOR {self.name} request")
        try:
            topic, raw = self.replies.get(timeout=self.ctx.timeout)
        except queue.Empty:
            raise CaseFailure(f"no CBOR {self.name} reply within {self.ctx.timeout:g} s"
                              f"{self.session.context()}") from None
        kind = topic.rsplit("/", 1)[1]
        try:
            body = cbor2.loads(raw)
        except Exception as e:  # noqa: BLE001
            raise CaseFailure(f"CBOR {self.name} {kind} payload does not decode as CBOR ({e}): {raw[:40]!r}") from None
        check(isinstance(body, dict), f"CBOR {self.name} {kind} payload is {type(body).__name__}, not a CBOR map")
        check(all(isinstance(k, str) for k in body),
              f"CBOR {self.name} {kind} map has non-text-string keys: {list(body)!r}")
        return kind, raw, body

    def expect_accepted(self, request: dict) -> dict:
        kind, _, body = self.call(request)
        if kind == "rejected":
            raise CaseFailure(f"CBOR {self.name} rejected: {body!r}")
        return body


def cbor_item_major_type_after_key(raw: bytes, key: str) -> int | None:
    """Major type of the item right after the text-string `key` in `raw` (a flat map)."""
    k = key.encode()
    assert len(k) < 24
    i = raw.find(bytes([0x60 | len(k)]) + k)
    if i < 0:
        return None
    j = i + 1 + len(k)
    return raw[j] >> 5 if j < len(raw) else None


def case_mqtt3_cbor(ctx: Ctx) -> str:
    serial = ctx.serial("m3cbor")
    key, csr = make_csr(serial)
    template = ctx.template
    with Mqtt3Session(ctx, ctx.client_id("m3cbor"), cert_path=ctx.args.cert, key_path=ctx.args.key) as s:
        create = CborOperation(ctx, s, "CreateCertificateFromCsr", "$aws/certificates/create-from-csr/cbor")
        register = CborOperation(ctx, s, "RegisterThing", f"$aws/provisioning-templates/{template}/provision/cbor")

        resp = create.expect_accepted({"certificateSigningRequest": csr})
        for field in ("certificateId", "certificatePem", "certificateOwnershipToken"):
            check(isinstance(resp.get(field), str), f"CBOR accepted {field} is {type(resp.get(field)).__name__}, "
                                                    "expected a text string")
        check_issued(resp["certificateId"], resp["certificatePem"], resp["certificateOwnershipToken"],
                     expected_key=key.public_key())

        # A rejected reply, to see statusCode as CBOR encodes it.
        kind, raw, err = register.call({"certificateOwnershipToken": "", "parameters": {"SerialNumber": serial}})
        check(kind == "rejected", "CBOR RegisterThing with an empty token was accepted")
        major = cbor_item_major_type_after_key(raw, "statusCode")
        check(major == 0, f"CBOR rejected statusCode is major type {major!r}, expected 0 (unsigned integer); "
                          f"payload {raw.hex()}")
        check(err.get("statusCode") == 400, f"CBOR rejected statusCode {err.get('statusCode')!r}, expected 400")
        check(err.get("errorCode") == "InvalidCertificateOwnershipToken",
              f"CBOR rejected errorCode {err.get('errorCode')!r}, expected 'InvalidCertificateOwnershipToken'")
        check(isinstance(err.get("errorMessage"), str) and err["errorMessage"],
              f"CBOR rejected errorMessage {err.get('errorMessage')!r}")

        reg = register.expect_accepted({"certificateOwnershipToken": resp["certificateOwnershipToken"],
                                        "parameters": TEMPLATES[template].parameters(serial)})
        check(isinstance(reg.get("thingName"), str), f"CBOR thingName is {reg.get('thingName')!r}")
        dc = reg.get("deviceConfiguration")
        check(isinstance(dc, dict) and all(isinstance(k, str) and isinstance(v, str) for k, v in dc.items()),
              f"CBOR deviceConfiguration is {dc!r}, expected a map of text strings")
        thing = check_registered(ctx, template, serial, reg["thingName"], dc)
    return f"certificate {resp['certificateId'][:12]}…, thing {thing}, rejected statusCode is a CBOR unsigned integer"


# ---------------------------------------------------------------------------------------------
# Cases: V2 request-response client


def v2_csr_flow(ctx: Ctx, identity, session, serial: str, template: str):
    key, csr = make_csr(serial)
    resp = v2_expect_accepted(ctx, identity.create_certificate_from_csr(
        iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr)),
        "CreateCertificateFromCsr", session)
    check_issued(resp.certificate_id, resp.certificate_pem, resp.certificate_ownership_token,
                 expected_key=key.public_key())
    reg = v2_expect_accepted(ctx, identity.register_thing(register_request(
        template, resp.certificate_ownership_token, TEMPLATES[template].parameters(serial))),
        "RegisterThing", session)
    thing = check_registered(ctx, template, serial, reg.thing_name, reg.device_configuration)
    return key, resp, thing


def v2_keys_flow(ctx: Ctx, identity, session, serial: str, template: str):
    resp = v2_expect_accepted(ctx, identity.create_keys_and_certificate(
        iotidentity.CreateKeysAndCertificateRequest()), "CreateKeysAndCertificate", session)
    cert = check_issued(resp.certificate_id, resp.certificate_pem, resp.certificate_ownership_token)
    label = check_private_key(resp.private_key, cert)
    reg = v2_expect_accepted(ctx, identity.register_thing(register_request(
        template, resp.certificate_ownership_token, TEMPLATES[template].parameters(serial))),
        "RegisterThing", session)
    thing = check_registered(ctx, template, serial, reg.thing_name, reg.device_configuration)
    return resp, label, thing


def v2_rejected_flow(ctx: Ctx, identity, session, serial: str, template: str):
    params = TEMPLATES[template].parameters(serial)
    kind, err = v2_result(ctx, identity.register_thing(register_request(template, never_issued_token(), params)),
                          "RegisterThing", session)
    check_token_rejection(kind, err, "a never-issued token", empty_token=False)
    kind, err = v2_result(ctx, identity.register_thing(register_request(template, "", params)),
                          "RegisterThing", session)
    check_token_rejection(kind, err, "an empty token", empty_token=True)


def case_mqtt3_v2_csr(ctx: Ctx) -> str:
    serial = ctx.serial("m3v2csr")
    with Mqtt3Session(ctx, ctx.client_id("m3v2csr"), cert_path=ctx.args.cert, key_path=ctx.args.key) as s:
        _, resp, thing = v2_csr_flow(ctx, v2_client(ctx, s.connection), s, serial, ctx.template)
    return f"certificate {resp.certificate_id[:12]}…, thing {thing} (UNSUBSCRIBE between operations served)"


def case_mqtt5_keys(ctx: Ctx) -> str:
    serial = ctx.serial("m5keys")
    with Mqtt5Session(ctx, ctx.client_id("m5keys"), cert_path=ctx.args.cert, key_path=ctx.args.key) as s:
        resp, label, thing = v2_keys_flow(ctx, v2_client(ctx, s.client), s, serial, ctx.template)
    return f"certificate {resp.certificate_id[:12]}…, key {label}, thing {thing}"


def case_mqtt5_csr(ctx: Ctx) -> str:
    serial = ctx.serial("m5csr")
    with Mqtt5Session(ctx, ctx.client_id("m5csr"), cert_path=ctx.args.cert, key_path=ctx.args.key) as s:
        _, resp, thing = v2_csr_flow(ctx, v2_client(ctx, s.client), s, serial, ctx.template)
    return f"certificate {resp.certificate_id[:12]}…, thing {thing}"


def case_mqtt5_rejected(ctx: Ctx) -> str:
    serial = ctx.serial("m5rej")
    with Mqtt5Session(ctx, ctx.client_id("m5rej"), cert_path=ctx.args.cert, key_path=ctx.args.key) as s:
        v2_rejected_flow(ctx, v2_client(ctx, s.client), s, serial, ctx.template)
    return "never-issued and empty tokens: 400 InvalidCertificateOwnershipToken"


# ---------------------------------------------------------------------------------------------
# Case: the issued identity is live


@dataclass
class Device:
    """A provisioned device identity: its thing name and its certificate and key files."""
    thing: str
    certificate_id: str
    cert_pem: bytes
    key_pem: bytes
    cert_path: str
    key_path: str


def provision_device(ctx: Ctx, tag: str, files: str, template: str | None = None) -> Device:
    """CSR flow with `template` (default: the device template, whose policy allows connect,
    publish, subscribe and receive on everything); the certificate and key are written under
    `files`."""
    template = template or ctx.device_template
    serial = ctx.serial(tag)
    key, csr = make_csr(serial)
    with Mqtt3Session(ctx, ctx.client_id(f"{tag}claim"), cert_path=ctx.args.cert, key_path=ctx.args.key) as s:
        client = v1_client(s)
        create = v1_create_from_csr(ctx, s, client)
        register = v1_register(ctx, s, client, template)
        resp = create.expect_accepted(lambda qos: client.publish_create_certificate_from_csr(
            iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr), qos))
        reg = register.expect_accepted(lambda qos: client.publish_register_thing(register_request(
            template, resp.certificate_ownership_token, TEMPLATES[template].parameters(serial)), qos))
        thing = check_registered(ctx, template, serial, reg.thing_name, reg.device_configuration)
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    cert_path, key_path = os.path.join(files, f"{tag}.crt"), os.path.join(files, f"{tag}.key")
    with open(cert_path, "wb") as f:
        f.write(resp.certificate_pem.encode())
    with open(key_path, "wb") as f:
        f.write(key_pem)
    return Device(thing, resp.certificate_id, resp.certificate_pem.encode(), key_pem, cert_path, key_path)


def topics_until(q: queue.Queue, marker: str, ctx: Ctx, who: str) -> list[str]:
    """Topics received on `q` until one on `marker` (deliveries to a connection keep their
    order, and the marker was published last)."""
    got = []
    while True:
        try:
            topic = q.get(timeout=ctx.timeout)
        except queue.Empty:
            raise CaseFailure(f"{who}: no message on {marker} within {ctx.timeout:g} s "
                              f"(received {got})") from None
        if topic == marker:
            return got
        got.append(topic)


def mqtt5_subscribe(ctx: Ctx, s: Mqtt5Session, filters: list[str]) -> None:
    suback = ctx.wait(s.client.subscribe(mqtt5.SubscribePacket(subscriptions=[
        mqtt5.Subscription(topic_filter=f, qos=mqtt5.QoS.AT_LEAST_ONCE) for f in filters])),
        f"SUBACK for {filters}")
    check(list(suback.reason_codes) == [mqtt5.SubackReasonCode.GRANTED_QOS_1] * len(filters),
          f"SUBACK for {filters}: {suback.reason_codes}{s.context()}")


def mqtt5_publish(ctx: Ctx, s: Mqtt5Session, topic: str) -> None:
    puback = ctx.wait(s.client.publish(mqtt5.PublishPacket(
        topic=topic, payload=b"x", qos=mqtt5.QoS.AT_LEAST_ONCE)), f"PUBACK for {topic}")
    check(puback.puback.reason_code == mqtt5.PubackReasonCode.SUCCESS,
          f"PUBACK for {topic}: {puback.puback.reason_code!r}{s.context()}")


def case_mqtt5_topic_filters(ctx: Ctx) -> str:
    """AWS: `sensor/#` receives `sensor/temperature`, not `sensor` (the MQTT specification
    would deliver the parent level too)."""
    base = f"interop/{ctx.run_id}/sensor"
    with tempfile.TemporaryDirectory() as files:
        device = provision_device(ctx, "filt", files)
        received: queue.Queue = queue.Queue()
        with Mqtt5Session(ctx, ctx.client_id("filt"), cert_path=device.cert_path, key_path=device.key_path,
                          on_publish=lambda d: received.put(d.publish_packet.topic)) as s:
            mqtt5_subscribe(ctx, s, [f"{base}/#", f"{base}-marker"])
            for topic in [base, f"{base}/temperature", f"{base}/temperature/room1", f"{base}-marker"]:
                mqtt5_publish(ctx, s, topic)
            got = topics_until(received, f"{base}-marker", ctx, "subscriber")
    want = [f"{base}/temperature", f"{base}/temperature/room1"]
    check(got == want, f"{base}/# received {got}, expected {want} (not the parent {base})")
    return f"{base}/# received the two sub-levels and not {base} itself"


def case_shared_subscription(ctx: Ctx) -> str:
    """AWS supports shared subscriptions on MQTT 3.1.1 and 5: `$share/<name>/<filter>`, each
    message to only one member of the group."""
    topic = f"interop/{ctx.run_id}/jobs"
    shared = f"$share/g{ctx.run_id}/{topic}"
    marker = f"interop/{ctx.run_id}/marker"
    jobs = [f"{topic}/{i}" for i in range(6)]
    with tempfile.TemporaryDirectory() as files:
        device = provision_device(ctx, "share", files)
        queues = [queue.Queue() for _ in range(3)]
        paths = dict(cert_path=device.cert_path, key_path=device.key_path)
        with Mqtt5Session(ctx, ctx.client_id("share1"), **paths,
                          on_publish=lambda d: queues[0].put(d.publish_packet.topic)) as m1, \
             Mqtt5Session(ctx, ctx.client_id("share2"), **paths,
                          on_publish=lambda d: queues[1].put(d.publish_packet.topic)) as m2, \
             Mqtt3Session(ctx, ctx.client_id("share3"), cert_pem=device.cert_pem, key_pem=device.key_pem) as m3, \
             Mqtt5Session(ctx, ctx.client_id("sharepub"), **paths) as pub:
            for m in (m1, m2):
                mqtt5_subscribe(ctx, m, [f"{shared}/#", marker])
            for f in (f"{shared}/#", marker):
                fut, _ = m3.connection.subscribe(
                    topic=f, qos=QOS1, callback=lambda topic, payload, **kw: queues[2].put(topic))
                granted = ctx.wait(fut, f"SUBACK for {f} (MQTT 3.1.1)")
                check(granted["qos"] == QOS1, f"SUBACK for {f} (MQTT 3.1.1): {granted}")
            for job in jobs + [marker]:
                mqtt5_publish(ctx, pub, job)
            got = [topics_until(q, marker, ctx, who) for q, who in zip(queues, ["MQTT 5 member 1", "MQTT 5 member 2", "MQTT 3.1.1 member"])]
    delivered = sorted(t for g in got for t in g)
    check(delivered == jobs, f"each of {len(jobs)} messages to exactly one member; members got {got}")
    check(all(got), f"every member should get some of the messages; members got {got}")
    return f"{len(jobs)} messages shared by 2 MQTT 5 members and 1 MQTT 3.1.1 member: {[len(g) for g in got]}"


def case_device_connect(ctx: Ctx) -> str:
    template = ctx.device_template
    serial = ctx.serial("dev")
    key, csr = make_csr(serial)
    with Mqtt3Session(ctx, ctx.client_id("devclaim"), cert_path=ctx.args.cert, key_path=ctx.args.key) as s:
        client = v1_client(s)
        create = v1_create_from_csr(ctx, s, client)
        register = v1_register(ctx, s, client, template)
        resp = create.expect_accepted(lambda qos: client.publish_create_certificate_from_csr(
            iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr), qos))
        check_issued(resp.certificate_id, resp.certificate_pem, resp.certificate_ownership_token,
                     expected_key=key.public_key())
        reg = register.expect_accepted(lambda qos: client.publish_register_thing(register_request(
            template, resp.certificate_ownership_token, TEMPLATES[template].parameters(serial)), qos))
        thing = check_registered(ctx, template, serial, reg.thing_name, reg.device_configuration)
    # The claim session is closed; the device now connects as itself (docs/aws-fleet-provisioning.md §2 "After success").
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
    try:
        with Mqtt3Session(ctx, thing, cert_pem=resp.certificate_pem.encode(), key_pem=key_pem):
            pass
    except CaseFailure as e:
        raise CaseFailure(f"device identity of {thing} (certificate {resp.certificate_id[:12]}…) "
                          f"cannot connect: {e}") from None
    return f"thing {thing} connected with its issued certificate as client id {thing!r} and disconnected"


def mqtt5_puback(ctx: Ctx, s: Mqtt5Session, topic: str):
    """QoS 1 publish; the PUBACK reason code, whatever it is."""
    done = ctx.wait(s.client.publish(mqtt5.PublishPacket(topic=topic, payload=b"{}", qos=mqtt5.QoS.AT_LEAST_ONCE)),
                    f"PUBACK for {topic}")
    check(done.puback is not None, f"no PUBACK packet for {topic}")
    return done.puback.reason_code


def case_device_conditions(ctx: Ctx) -> str:
    """AWS's thing-policy example (IsAttached + thing attributes), judged through the SDK."""
    with tempfile.TemporaryDirectory() as d:
        device = provision_device(ctx, "cond", d, ATTACHED_TEMPLATE)
        thing, cert_path, key_path = device.thing, device.cert_path, device.key_path
        # Client id = thing name, certificate attached: IsAttached is true, connect allowed.
        with Mqtt5Session(ctx, thing, cert_path=cert_path, key_path=key_path) as s:
            on_line = f"lines/{ATTACHED_LINE}/telemetry"
            code = mqtt5_puback(ctx, s, on_line)
            check(code == mqtt5.PubackReasonCode.SUCCESS,
                  f"publish to {on_line} (the thing's line attribute) got PUBACK {code!r}{s.context()}")
            off_line = "lines/L2/telemetry"
            code = mqtt5_puback(ctx, s, off_line)
            check(code == mqtt5.PubackReasonCode.NOT_AUTHORIZED,
                  f"publish to {off_line} (not the thing's line) got PUBACK {code!r}, expected NOT_AUTHORIZED")
        # Another client id: no thing of that name, so IsAttached is false and ThingName does not resolve.
        other = ctx.client_id("not-the-thing")
        try:
            with Mqtt5Session(ctx, other, cert_path=cert_path, key_path=key_path):
                pass
        except CaseFailure as e:
            check("NOT_AUTHORIZED" in str(e), f"CONNECT as {other!r} failed, but not as NOT_AUTHORIZED: {e}")
        else:
            raise CaseFailure(f"CONNECT as {other!r} (not the thing name) was accepted; "
                              "the policy needs iot:Connection.Thing.IsAttached")
    return (f"thing {thing} connected and published on lines/{ATTACHED_LINE}/*, was refused lines/L2/*, "
            f"and its certificate could not connect as another client id")


CASES = [
    ("mqtt3-keys", "MQTT 3.1.1 + IotIdentityClient: CreateKeysAndCertificate -> RegisterThing", case_mqtt3_keys),
    ("mqtt3-csr", "MQTT 3.1.1 + IotIdentityClient: CreateCertificateFromCsr -> RegisterThing", case_mqtt3_csr),
    ("mqtt3-rejected", "MQTT 3.1.1 + IotIdentityClient: RegisterThing with bad tokens is rejected", case_mqtt3_rejected),
    ("mqtt3-cbor", "MQTT 3.1.1, raw CBOR topics: CreateCertificateFromCsr -> RegisterThing", case_mqtt3_cbor),
    ("mqtt3-v2-csr", "MQTT 3.1.1 + IotIdentityClientV2: CreateCertificateFromCsr -> RegisterThing", case_mqtt3_v2_csr),
    ("mqtt5-keys", "MQTT 5 + IotIdentityClientV2: CreateKeysAndCertificate -> RegisterThing", case_mqtt5_keys),
    ("mqtt5-csr", "MQTT 5 + IotIdentityClientV2: CreateCertificateFromCsr -> RegisterThing", case_mqtt5_csr),
    ("mqtt5-rejected", "MQTT 5 + IotIdentityClientV2: RegisterThing with bad tokens is rejected", case_mqtt5_rejected),
    ("device-connect", "MQTT 3.1.1: provision with the device template, then CONNECT as the device",
     case_device_connect),
    ("mqtt5-topic-filters", "MQTT 5 as a provisioned device: a/# does not receive a (AWS's topic rules)",
     case_mqtt5_topic_filters),
    ("shared-subscription", "MQTT 5 and 3.1.1 as a provisioned device: $share/<name>/<filter> gives each "
     "message to one member", case_shared_subscription),
    ("device-conditions", "MQTT 5: a device whose policy needs IsAttached and its thing attribute",
     case_device_conditions),
]


# ---------------------------------------------------------------------------------------------


def parse_args(argv):
    p = argparse.ArgumentParser(
        description="Provision against a fleet-provisioning endpoint with the AWS IoT Device SDK "
                    "for Python and check every response (one PASS/FAIL line per case).")
    p.add_argument("--endpoint", default="localhost",
                   help="host name; also used for SNI and server-certificate verification (default: localhost)")
    p.add_argument("--port", type=int, required=True, help="MQTT over TLS port")
    p.add_argument("--ca-file", required=True, help="PEM CA that signed the endpoint's server certificate")
    p.add_argument("--cert", required=True, help="claim certificate (PEM)")
    p.add_argument("--key", required=True, help="claim private key (PEM)")
    p.add_argument("--template", default="FleetTemplate", choices=sorted(TEMPLATES),
                   help="template for the provisioning cases (default: FleetTemplate)")
    p.add_argument("--device-template", default="PySampleTemplate", choices=sorted(TEMPLATES),
                   help="template for device-connect; its policy must allow iot:Connect (default: PySampleTemplate)")
    p.add_argument("--timeout", type=float, default=10.0,
                   help="seconds to wait for each CONNACK, SUBACK, PUBACK and reply (default: 10)")
    p.add_argument("--case", action="append", choices=[c[0] for c in CASES], metavar="NAME",
                   help="run only this case (repeatable); cases: " + ", ".join(c[0] for c in CASES))
    p.add_argument("--sdk-log", metavar="FILE",
                   help="write the awscrt (SDK transport) log to FILE ('stderr' for the terminal)")
    p.add_argument("--sdk-log-level", default="Debug", choices=[lvl.name for lvl in io.LogLevel],
                   help="awscrt log level with --sdk-log (default: Debug)")
    p.add_argument("-v", "--verbose", action="store_true", help="print connection events while cases run")
    args = p.parse_args(argv)
    if args.timeout <= 0:
        p.error("--timeout must be positive")
    return args


def main(argv=None) -> int:
    args = parse_args(argv)
    if args.sdk_log:
        io.init_logging(io.LogLevel[args.sdk_log_level], args.sdk_log)
    ctx = Ctx(args)
    selected = [c for c in CASES if not args.case or c[0] in args.case]
    print(f"interop: awsiotsdk against {args.endpoint}:{args.port}, run {ctx.run_id}, "
          f"template {args.template}, device template {args.device_template}", flush=True)
    passed = failed = 0
    started = time.monotonic()
    for name, title, fn in selected:
        t0 = time.monotonic()
        try:
            detail = fn(ctx)
            ok = True
        except CaseFailure as e:
            detail, ok = str(e), False
        except Exception as e:  # noqa: BLE001 - a bug in the case or the SDK: report, keep going
            detail, ok = f"unexpected {describe(e)}", False
            if args.verbose:
                traceback.print_exc()
        took = time.monotonic() - t0
        print(f"{'PASS' if ok else 'FAIL'} {name} ({took:.2f} s): {title}: {detail}", flush=True)
        passed += ok
        failed += not ok
    print(f"interop: {len(selected)} cases in {time.monotonic() - started:.1f} s", flush=True)
    print(f"{passed} passed, {failed} failed", flush=True)
    return 0 if failed == 0 else 1


if __name__ == "__main__":
    sys.exit(main())

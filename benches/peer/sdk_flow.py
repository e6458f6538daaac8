#!/usr/bin/env python3
"""Peer comparison, SDK side: provisions N devices against a fleet-provisioning endpoint the
way the AWS IoT Device SDK for Python's fleet-provisioning sample does it
(samples/service_clients/fleet_provisioning_csr.py in aws-iot-device-sdk-python-v2): per
device, a P-256 key and CSR made with `cryptography`, one MQTT 5 connection with the claim
certificate (mqtt5_client_builder.mtls_from_path), an IotIdentityClientV2, then
CreateCertificateFromCsr -> RegisterThing, then the client is stopped.

`--concurrency K` runs K such devices at a time (each with its own connection), as K copies
of the sample would. Every reply is checked (certificate id, token, thing name); any failure
stops the run with status 1. The last line is machine-readable:

    sdk: devices=200 concurrency=1 elapsed_s=12.345 rate_per_s=16.20
"""

from __future__ import annotations

import argparse
import concurrent.futures
import sys
import time
import uuid

from awscrt import mqtt5, mqtt_request_response
from awsiot import iotidentity, mqtt5_client_builder
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID


def make_csr(common_name: str) -> str:
    key = ec.generate_private_key(ec.SECP256R1())
    csr = (x509.CertificateSigningRequestBuilder()
           .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
           .sign(key, hashes.SHA256()))
    return csr.public_bytes(serialization.Encoding.PEM).decode()


def provision_one(args: argparse.Namespace, serial: str) -> str:
    """One device, start to finish, on its own connection. Returns the thing name."""
    csr = make_csr(serial)
    connected: concurrent.futures.Future = concurrent.futures.Future()
    stopped: concurrent.futures.Future = concurrent.futures.Future()

    def on_success(event: mqtt5.LifecycleConnectSuccessData) -> None:
        if not connected.done():
            connected.set_result(True)

    def on_failure(event: mqtt5.LifecycleConnectFailureData) -> None:
        if not connected.done():
            connected.set_exception(RuntimeError(f"connect failed: {event.exception}"))

    client = mqtt5_client_builder.mtls_from_path(
        endpoint=args.endpoint,
        port=args.port,
        cert_filepath=args.cert,
        pri_key_filepath=args.key,
        ca_filepath=args.ca_file,
        client_id=serial,
        keep_alive_interval_sec=1200,
        on_lifecycle_connection_success=on_success,
        on_lifecycle_connection_failure=on_failure,
        on_lifecycle_stopped=lambda event: stopped.set_result(True),
    )
    client.start()
    try:
        identity = iotidentity.IotIdentityClientV2(client, mqtt_request_response.ClientOptions(
            max_request_response_subscriptions=2,
            max_streaming_subscriptions=0,
            operation_timeout_in_seconds=30,
        ))
        connected.result(timeout=30)
        created = identity.create_certificate_from_csr(
            iotidentity.CreateCertificateFromCsrRequest(certificate_signing_request=csr)).result(timeout=30)
        if len(created.certificate_id or "") != 64 or not created.certificate_ownership_token:
            raise RuntimeError(f"CreateCertificateFromCsr answered {created}")
        registered = identity.register_thing(iotidentity.RegisterThingRequest(
            template_name=args.template,
            certificate_ownership_token=created.certificate_ownership_token,
            parameters={"ThingName": serial, "SerialNumber": serial, "DeviceLocation": "Seattle"},
        )).result(timeout=30)
        if registered.thing_name != serial:
            raise RuntimeError(f"RegisterThing named the thing {registered.thing_name!r}, expected {serial!r}")
        return registered.thing_name
    finally:
        client.stop()
        stopped.result(timeout=30)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--endpoint", default="localhost")
    p.add_argument("--port", type=int, required=True)
    p.add_argument("--ca-file", required=True)
    p.add_argument("--cert", required=True, help="claim certificate (PEM)")
    p.add_argument("--key", required=True, help="claim key (PEM)")
    p.add_argument("--template", default="FleetTemplate")
    p.add_argument("--devices", type=int, default=200)
    p.add_argument("--concurrency", type=int, default=1)
    args = p.parse_args(argv)
    if args.devices < 1 or args.concurrency < 1:
        p.error("--devices and --concurrency must be positive")

    run = uuid.uuid4().hex[:8]
    serials = [f"peer-{run}-{i:05d}" for i in range(args.devices)]
    started = time.monotonic()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.concurrency) as pool:
        futures = [pool.submit(provision_one, args, s) for s in serials]
        for f in concurrent.futures.as_completed(futures):
            try:
                f.result()
            except Exception as e:  # noqa: BLE001 - reported, and the run fails
                print(f"sdk: a device failed: {type(e).__name__}: {e}", file=sys.stderr, flush=True)
                pool.shutdown(wait=False, cancel_futures=True)
                return 1
    elapsed = time.monotonic() - started
    print(f"sdk: devices={args.devices} concurrency={args.concurrency} "
          f"elapsed_s={elapsed:.3f} rate_per_s={args.devices / elapsed:.2f}", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

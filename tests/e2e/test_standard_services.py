"""The standard gRPC services next to hvlm.v1.AttentionService: health checking
(grpc.health.v1.Health) and server reflection (grpc.reflection.v1alpha). No generated stubs:
the few messages are encoded and decoded by hand."""

import grpc
import pytest

SERVICE = "hvlm.v1.AttentionService"
HEALTH_CHECK = "/grpc.health.v1.Health/Check"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
SERVING = 1


def _identity(data):
    return data


def varint(value):
    out = bytearray()
    while True:
        byte, value = value & 0x7F, value >> 7
        out.append(byte | (0x80 if value else 0))
        if not value:
            return bytes(out)


def string_field(number, text):
    data = text.encode()
    return varint(number << 3 | 2) + varint(len(data)) + data


def parse_fields(data):
    """[(field number, value)]: ints for varints, bytes for length-delimited fields."""
    fields, i = [], 0

    def read_varint():
        nonlocal i
        value = shift = 0
        while True:
            byte = data[i]
            i += 1
            value |= (byte & 0x7F) << shift
            shift += 7
            if not byte & 0x80:
                return value

    while i < len(data):
        key = read_varint()
        number, wire = key >> 3, key & 7
        if wire == 0:
            fields.append((number, read_varint()))
        elif wire == 2:
            size = read_varint()
            fields.append((number, data[i:i + size]))
            i += size
        elif wire == 1:
            fields.append((number, data[i:i + 8]))
            i += 8
        elif wire == 5:
            fields.append((number, data[i:i + 4]))
            i += 4
        else:
            raise ValueError(f"unexpected wire type {wire}")
    return fields


@pytest.fixture
def channel(server):
    with grpc.insecure_channel(server.address) as ch:
        yield ch


def health_check(channel, service):
    check = channel.unary_unary(HEALTH_CHECK, request_serializer=_identity,
                                response_deserializer=_identity)
    # HealthCheckRequest {string service = 1}; "" is the default, sent as no field at all.
    response = check(string_field(1, service) if service else b"", timeout=10)
    # HealthCheckResponse {ServingStatus status = 1}
    return dict(parse_fields(response)).get(1, 0)


def test_health_check_reports_serving(channel):
    assert health_check(channel, "") == SERVING
    assert health_check(channel, SERVICE) == SERVING
    with pytest.raises(grpc.RpcError) as err:
        health_check(channel, "no.such.Service")
    assert err.value.code() == grpc.StatusCode.NOT_FOUND


def test_reflection_lists_the_services(channel):
    info = channel.stream_stream(REFLECTION, request_serializer=_identity,
                                 response_deserializer=_identity)
    # ServerReflectionRequest {string host = 1; oneof {... string list_services = 7;}}
    (response,) = list(info(iter([string_field(7, "")]), timeout=10))
    fields = parse_fields(response)
    # ServerReflectionResponse {...; ListServiceResponse list_services_response = 6}
    (listing,) = [value for number, value in fields if number == 6]
    # ListServiceResponse {repeated ServiceResponse service = 1}; ServiceResponse {name = 1}
    names = {dict(parse_fields(entry))[1].decode()
             for number, entry in parse_fields(listing) if number == 1}
    assert {SERVICE, "grpc.health.v1.Health"} <= names, names

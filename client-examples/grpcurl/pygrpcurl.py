#!/usr/bin/env python3
"""A stand-in for the subset of grpcurl that walkthrough.sh uses, built on server reflection
like grpcurl itself (no proto files): `list [SERVICE]`, `describe SYMBOL` and calls of any
kind (unary, server, client or bidirectional streaming), with `-plaintext`, `-H 'name: value'`
and `-d JSON` (several JSON objects in a row for a client stream). Responses print as JSON with
camelCase names, as grpcurl prints them; an error prints grpcurl's `ERROR:` block and exits 1.

Used by scripts/test-clients.sh to run the README's grpcurl walkthrough where grpcurl itself
is not installed (Debian does not package it). Needs grpcio and protobuf (grpcio-tools brings
both) and grpcio-reflection for the reflection messages.
"""
import json
import sys

import grpc
from google.protobuf import descriptor_pb2, descriptor_pool, json_format
from google.protobuf.message_factory import GetMessageClass
from grpc_reflection.v1alpha import reflection_pb2  # same messages as grpc.reflection.v1

# tonic serves reflection v1 only; its messages are those of v1alpha under another name.
REFLECTION = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"


def usage():
    sys.exit("usage: pygrpcurl.py -plaintext [-H 'name: value']... [-d JSON] ADDR (list [SERVICE] | describe SYMBOL | SERVICE/METHOD)")


class Reflection:
    def __init__(self, channel):
        self.call = channel.stream_stream(
            REFLECTION,
            request_serializer=reflection_pb2.ServerReflectionRequest.SerializeToString,
            response_deserializer=reflection_pb2.ServerReflectionResponse.FromString)
        self.pool = descriptor_pool.DescriptorPool()
        self.added = set()

    def ask(self, **request):
        reply = next(iter(self.call(iter([reflection_pb2.ServerReflectionRequest(**request)]))))
        if reply.HasField("error_response"):
            raise LookupError(reply.error_response.error_message)
        return reply

    def services(self):
        return sorted(s.name for s in self.ask(list_services="").list_services_response.service)

    def _add(self, files):
        """Adds serialized FileDescriptorProtos, dependencies first (fetched when missing)."""
        protos = {}
        for raw in files:
            fd = descriptor_pb2.FileDescriptorProto.FromString(raw)
            protos[fd.name] = fd

        def add(name):
            if name in self.added:
                return
            fd = protos.get(name)
            if fd is None:
                try:
                    reply = self.ask(file_by_filename=name)
                    for raw in reply.file_descriptor_response.file_descriptor_proto:
                        other = descriptor_pb2.FileDescriptorProto.FromString(raw)
                        protos.setdefault(other.name, other)
                    fd = protos[name]
                except (LookupError, KeyError):  # a well-known type the server does not list
                    fd = descriptor_pb2.FileDescriptorProto()
                    descriptor_pool.Default().FindFileByName(name).CopyToProto(fd)
            for dep in fd.dependency:
                add(dep)
            self.pool.Add(fd)
            self.added.add(name)

        for name in list(protos):
            add(name)

    def symbol(self, name):
        try:
            return self.pool.FindServiceByName(name)
        except KeyError:
            pass
        try:
            return self.pool.FindMessageTypeByName(name)
        except KeyError:
            pass
        reply = self.ask(file_containing_symbol=name)
        self._add(reply.file_descriptor_response.file_descriptor_proto)
        for find in (self.pool.FindServiceByName, self.pool.FindMessageTypeByName, self.pool.FindMethodByName):
            try:
                return find(name)
            except KeyError:
                pass
        raise LookupError(f"symbol not found: {name}")


def describe(desc):
    if isinstance(desc, descriptor_pool.descriptor.ServiceDescriptor):
        print(f"{desc.full_name} is a service:")
        print(f"service {desc.name} {{")
        for m in desc.methods:
            cs = "stream " if m.client_streaming else ""
            ss = "stream " if m.server_streaming else ""
            print(f"  rpc {m.name} ( {cs}.{m.input_type.full_name} ) returns ( {ss}.{m.output_type.full_name} );")
        print("}")
    else:
        print(f"{desc.full_name} is a message:")
        print(f"message {desc.name} {{")
        def kind(f):
            if f.message_type:
                return "." + f.message_type.full_name
            if f.enum_type:
                return "." + f.enum_type.full_name
            return descriptor_pb2.FieldDescriptorProto.Type.Name(f.type)[5:].lower()

        for f in desc.fields:
            repeated = f.is_repeated if hasattr(f, "is_repeated") else f.label == f.LABEL_REPEATED
            if f.message_type and f.message_type.GetOptions().map_entry:
                key, val = f.message_type.fields_by_name["key"], f.message_type.fields_by_name["value"]
                print(f"  map<{kind(key)}, {kind(val)}> {f.name} = {f.number};")
            else:
                print(f"  {'repeated ' if repeated else ''}{kind(f)} {f.name} = {f.number};")
        print("}")


def parse_stream(text, cls):
    """One JSON object, or several in a row (a client stream)."""
    decoder, i, out = json.JSONDecoder(), 0, []
    while True:
        while i < len(text) and text[i].isspace():
            i += 1
        if i >= len(text):
            break
        obj, i = decoder.raw_decode(text, i)
        out.append(json_format.ParseDict(obj, cls()))
    return out or [cls()]


def main(argv):
    headers, data, rest = [], None, []
    i = 0
    while i < len(argv):
        a = argv[i]
        if a == "-plaintext":
            pass
        elif a == "-H":
            i += 1
            name, _, val = argv[i].partition(":")
            headers.append((name.strip().lower(), val.strip()))
        elif a == "-d":
            i += 1
            data = argv[i]
        elif a.startswith("-"):
            usage()
        else:
            rest.append(a)
        i += 1
    if len(rest) < 2:
        usage()
    addr, what, args = rest[0], rest[1], rest[2:]
    channel = grpc.insecure_channel(addr)
    refl = Reflection(channel)
    try:
        if what == "list":
            if args:
                svc = refl.symbol(args[0])
                for m in svc.methods:
                    print(m.full_name)
            else:
                print("\n".join(refl.services()))
            return 0
        if what == "describe":
            describe(refl.symbol(args[0]))
            return 0
        service, _, method = what.replace("/", ".").rpartition(".")
        m = refl.symbol(service).methods_by_name[method]
        req_cls, resp_cls = GetMessageClass(m.input_type), GetMessageClass(m.output_type)
        requests = parse_stream(data or "{}", req_cls)
        path = f"/{service}/{method}"
        ser, de = (lambda x: x.SerializeToString()), resp_cls.FromString
        if m.client_streaming and m.server_streaming:
            replies = channel.stream_stream(path, ser, de)(iter(requests), metadata=headers)
        elif m.client_streaming:
            replies = [channel.stream_unary(path, ser, de)(iter(requests), metadata=headers)]
        elif m.server_streaming:
            replies = channel.unary_stream(path, ser, de)(requests[0], metadata=headers)
        else:
            replies = [channel.unary_unary(path, ser, de)(requests[0], metadata=headers)]
        for reply in replies:
            print(json_format.MessageToJson(reply, indent=2))
        return 0
    except grpc.RpcError as err:
        code = "".join(w.capitalize() for w in err.code().name.split("_"))
        print(f"ERROR:\n  Code: {code}\n  Message: {err.details()}", file=sys.stderr)
        return 1
    except LookupError as err:
        print(f"Failed: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))

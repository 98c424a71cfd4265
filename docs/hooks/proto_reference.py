"""The contract's reference, read from the proto's own comments.

`grpc_tools.protoc --include_source_info --descriptor_set_out` compiles the proto into a
`FileDescriptorSet` that keeps every comment with the path of what it is attached to; this
module walks it and writes Markdown. Nothing is copied from the proto by hand, so the page says
what the proto says.
"""

from __future__ import annotations

import tempfile
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from importlib.resources import as_file, files
from pathlib import Path

from google.protobuf import descriptor_pb2
from grpc_tools import protoc

ROOT = Path(__file__).resolve().parents[2]
PROTO_ROOT = ROOT / "protos"
PROTO = "rerank/v1/rerank_service.proto"

# Field numbers of descriptor.proto, the steps of a SourceCodeInfo path.
_FILE_MESSAGE, _FILE_ENUM, _FILE_SERVICE, _FILE_SYNTAX = 4, 5, 6, 12
_MESSAGE_FIELD, _MESSAGE_NESTED, _MESSAGE_ENUM, _MESSAGE_ONEOF = 2, 3, 4, 8
_ENUM_VALUE = 2
_SERVICE_METHOD = 2

_SCALARS: Mapping[int, str] = {
    value: name.removeprefix("TYPE_").lower()
    for name, value in descriptor_pb2.FieldDescriptorProto.Type.items()
}


def compile_proto() -> descriptor_pb2.FileDescriptorProto:
    """The contract's file, compiled with its comments (a `FileDescriptorSet` with source info)."""
    with tempfile.TemporaryDirectory() as scratch, as_file(files("grpc_tools") / "_proto") as wkt:
        out = Path(scratch) / "rerank.binpb"
        code = protoc.main(
            [
                "grpc_tools.protoc",
                f"-I{PROTO_ROOT}",
                f"-I{wkt}",
                "--include_source_info",
                f"--descriptor_set_out={out}",
                PROTO,
            ]
        )
        if code != 0:
            raise RuntimeError(f"protoc could not compile {PROTO} (exit {code})")
        descriptor_set = descriptor_pb2.FileDescriptorSet.FromString(out.read_bytes())
    (file,) = [f for f in descriptor_set.file if f.name == PROTO]
    return file


@dataclass(frozen=True)
class Comments:
    """The comments of one file, by the path of what each is attached to."""

    by_path: Mapping[tuple[int, ...], str]

    @classmethod
    def of(cls, file: descriptor_pb2.FileDescriptorProto) -> Comments:
        found: dict[tuple[int, ...], str] = {}
        for location in file.source_code_info.location:
            text = location.leading_comments or "".join(location.leading_detached_comments)
            if text:
                found[tuple(location.path)] = text
        return cls(found)

    def text(self, path: tuple[int, ...]) -> str:
        """The comment as Markdown paragraphs: each line without the one space after `//`."""
        raw = self.by_path.get(path, "")
        return "\n".join(line.removeprefix(" ") for line in raw.splitlines()).strip()

    def cell(self, path: tuple[int, ...]) -> str:
        """The comment in one table cell: paragraphs apart by a line break."""
        paragraphs = [" ".join(p.split()) for p in self.text(path).split("\n\n")]
        return "<br><br>".join(p for p in paragraphs if p).replace("|", "\\|")


def enum_values(
    file: descriptor_pb2.FileDescriptorProto, name: str
) -> Iterator[tuple[str, int, str]]:
    """Each value of the top-level enum `name`: its name, number and comment (one cell)."""
    comments = Comments.of(file)
    (index,) = [i for i, enum in enumerate(file.enum_type) if enum.name == name]
    for j, value in enumerate(file.enum_type[index].value):
        yield value.name, value.number, comments.cell((_FILE_ENUM, index, _ENUM_VALUE, j))


def rpc_comments(file: descriptor_pb2.FileDescriptorProto) -> Iterator[tuple[str, str]]:
    """Each RPC of the file's services, with its comment (Markdown)."""
    comments = Comments.of(file)
    for s, service in enumerate(file.service):
        for m, method in enumerate(service.method):
            yield method.name, comments.text((_FILE_SERVICE, s, _SERVICE_METHOD, m))


def _map_entries(file: descriptor_pb2.FileDescriptorProto) -> dict[str, tuple[str, str]]:
    """The map fields' entry types, by full name: their key and value types."""
    found: dict[str, tuple[str, str]] = {}

    def walk(message: descriptor_pb2.DescriptorProto, prefix: str) -> None:
        for nested in message.nested_type:
            name = f"{prefix}.{message.name}.{nested.name}"
            if nested.options.map_entry:
                key, value = nested.field
                found[name] = (
                    _type_name(key, file.package, {}),
                    _type_name(value, file.package, {}),
                )
            walk(nested, f"{prefix}.{message.name}")

    for message in file.message_type:
        walk(message, f".{file.package}")
    return found


def _type_name(
    field: descriptor_pb2.FieldDescriptorProto,
    package: str,
    maps: Mapping[str, tuple[str, str]],
) -> str:
    if field.type_name in maps:
        key, value = maps[field.type_name]
        return f"map&lt;{key}, {value}&gt;"
    if field.type_name:
        name = field.type_name.removeprefix(".")
        local = name.removeprefix(package + ".")
        shown = f"[`{local}`](#{local.replace('.', '').lower()})" if local != name else f"`{name}`"
    else:
        shown = f"`{_SCALARS[field.type]}`"
    if field.label == descriptor_pb2.FieldDescriptorProto.LABEL_REPEATED:
        return f"repeated {shown}"
    if field.proto3_optional:
        return f"optional {shown}"
    return shown


def _message(
    file: descriptor_pb2.FileDescriptorProto,
    message: descriptor_pb2.DescriptorProto,
    path: tuple[int, ...],
    comments: Comments,
    prefix: str = "",
) -> list[str]:
    lines = [f"### {prefix}{message.name}", "", comments.text(path), ""]
    if message.field:
        lines += ["| field | type | number | |", "|---|---|---:|---|"]
        oneofs = [o.name for o in message.oneof_decl]
        for i, field in enumerate(message.field):
            note = comments.cell((*path, _MESSAGE_FIELD, i))
            if field.HasField("oneof_index") and not field.proto3_optional:
                oneof = field.oneof_index
                what = comments.cell((*path, _MESSAGE_ONEOF, oneof))
                note = f"One of `{oneofs[oneof]}` ({what}) {note}"
            kind = _type_name(field, file.package, _map_entries(file))
            lines.append(f"| `{field.name}` | {kind} | {field.number} | {note} |")
        lines.append("")
    for i, enum in enumerate(message.enum_type):
        lines += _enum(enum, (*path, _MESSAGE_ENUM, i), comments, f"{prefix}{message.name}.")
    for i, nested in enumerate(message.nested_type):
        if not nested.options.map_entry:
            lines += _message(
                file, nested, (*path, _MESSAGE_NESTED, i), comments, f"{prefix}{message.name}."
            )
    return lines


def _enum(
    enum: descriptor_pb2.EnumDescriptorProto,
    path: tuple[int, ...],
    comments: Comments,
    prefix: str = "",
) -> list[str]:
    lines = [f"### {prefix}{enum.name}", "", comments.text(path), ""]
    lines += ["| value | number | |", "|---|---:|---|"]
    for i, value in enumerate(enum.value):
        lines.append(
            f"| `{value.name}` | {value.number} | {comments.cell((*path, _ENUM_VALUE, i))} |"
        )
    return [*lines, ""]


def contract_markdown() -> str:
    """The whole contract: the file's own comment, the service and its RPCs, then every
    message and enum in the proto's order."""
    file = compile_proto()
    comments = Comments.of(file)
    lines = [f"`{file.name}`, package `{file.package}`.", "", comments.text((_FILE_SYNTAX,)), ""]
    for s, service in enumerate(file.service):
        lines += [f"## Service `{service.name}`", "", comments.text((_FILE_SERVICE, s)), ""]
        for m, method in enumerate(service.method):
            request = method.input_type.removeprefix(f".{file.package}.")
            response = method.output_type.removeprefix(f".{file.package}.")
            lines += [
                f"### {method.name}",
                "",
                f"`rpc {method.name}(`[`{request}`](#{request.lower()})`) returns (`"
                f"[`{response}`](#{response.lower()})`)`",
                "",
                comments.text((_FILE_SERVICE, s, _SERVICE_METHOD, m)),
                "",
            ]
    lines += ["## Messages", ""]
    for i, message in enumerate(file.message_type):
        lines += _message(file, message, (_FILE_MESSAGE, i), comments)
    lines += ["## Enums", ""]
    for i, enum in enumerate(file.enum_type):
        lines += _enum(enum, (_FILE_ENUM, i), comments)
    return "\n".join(lines)

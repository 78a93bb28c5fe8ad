"""Load a ``torch.export`` archive (.pt2) from untrusted bytes without running any of its code.

``torch.export.load`` (torch 2.13) runs code from the archive by several routes, all reached
before the program could be refused:

- the sample inputs (``data/sample_inputs/model.pt``): ``torch.load(weights_only=True)`` that
  silently retries with ``weights_only=False`` (full pickle);
- a weight or tensor constant whose config says ``"use_pickle": true`` (``torch.load(weights_only=False)``);
- ``data/constants/opaque_obj_*`` (plain ``pickle.loads``) and ``custom_obj_*`` (TorchScript pickle);
- legacy ``data/weights/model.pt`` / ``data/constants/model.pt`` members (the same fallback);
- symbolic shapes in ``models/model.json``: every ``expr_str`` goes through ``sympy.sympify``,
  which is ``eval``;
- ``guards_code`` in ``models/model.json``: ``ep.module()`` compiles it with ``exec`` (only when
  the sample inputs were loaded);
- AOTInductor members (``data/aotinductor/``): native shared libraries.

So this loader checks the archive against an allow-list first (through torch's own zip reader, so
both see the same members), then builds the program from the parts itself: weights and constants
through torch's raw-bytes path (no pickle; refused unless every entry is a raw tensor), the graph
through torch's JSON deserializer after every symbolic expression and operator name was checked,
and the sample inputs are never read (deepscope does not need them). Anything else is refused with
``InvalidInput`` naming the member.
"""

from __future__ import annotations

import ast
import json
import math
import re
from pathlib import Path
from typing import Any

import torch
from torch._export.serde import schema
from torch._export.serde import serialize as serde
from torch.export.pt2_archive import _package as pkg

from ..errors import InvalidInput

#: The one program deepscope loads from an archive (``torch.export.save`` writes it under this name).
MODEL = "model"
WEIGHTS_CONFIG = f"data/weights/{MODEL}_weights_config.json"
CONSTANTS_CONFIG = f"data/constants/{MODEL}_constants_config.json"
PROGRAM = f"models/{MODEL}.json"

#: Members a ``torch.export.save`` archive holds; the sample inputs and extra files are never read.
_ALLOWED = re.compile(
    r"archive_format|archive_version|byteorder|\.data/version|\.data/serialization_id"
    rf"|{re.escape(PROGRAM)}|{re.escape(WEIGHTS_CONFIG)}|{re.escape(CONSTANTS_CONFIG)}"
    r"|data/weights/weight_\d+|data/constants/tensor_\d+"
    rf"|data/sample_inputs/{MODEL}\.pt|extra/[^/]+"
)

#: Members refused with a reason (first match wins); anything else not allowed is "unknown".
_REFUSED: tuple[tuple[re.Pattern[str], str], ...] = tuple(
    (re.compile(p), why)
    for p, why in (
        (
            r"data/(weights|constants)/[^/]+\.pt",
            "holds pickled weights or constants in the legacy format (unpickling runs code)",
        ),
        (r"data/constants/opaque_obj_\d+", "is an opaque Python object stored with pickle (unpickling runs code)"),
        (r"data/constants/custom_obj_\d+", "is a TorchScript custom object (its pickle can run code)"),
        (r"data/aotinductor/.*", "is AOTInductor compiled code (a native library)"),
        (r"data/(executorch|mtia).*|xl_model_weights/.*", "is a runtime payload deepscope does not load"),
        (r"models/[^/]+\.json", f"is a second program; deepscope loads only '{PROGRAM}'"),
    )
)

#: Names ``sympy.srepr`` writes for the expressions torch.export serialises (sympify evals the
#: string, so nothing outside these calls and literals may reach it).
_SYMPY_CALLS = frozenset(
    {
        "Symbol",
        "Dummy",
        "Integer",
        "Float",
        "Rational",
        "Add",
        "Mul",
        "Pow",
        "Mod",
        "Max",
        "Min",
        "Abs",
        "floor",
        "ceiling",
        "Eq",
        "Ne",
        "Lt",
        "Le",
        "Gt",
        "Ge",
        "Equality",
        "Unequality",
        "StrictLessThan",
        "StrictGreaterThan",
        "LessThan",
        "GreaterThan",
        "And",
        "Or",
        "Not",
        "Xor",
        "ITE",
        "Piecewise",
        "ExprCondPair",
        # torch.utils._sympy.functions, as the deserializer's own table names them
        "FloorDiv",
        "ModularIndexing",
        "Where",
        "PythonMod",
        "CleanDiv",
        "CeilToInt",
        "FloorToInt",
        "CeilDiv",
        "LShift",
        "RShift",
        "PowByNatural",
        "FloatPow",
        "FloatTrueDiv",
        "IntTrueDiv",
        "IsNonOverlappingAndDenseIndicator",
        "TruncToFloat",
        "TruncToInt",
        "RoundToInt",
        "RoundDecimal",
        "ToFloat",
        "Identity",
    }
)
_SYMPY_NAMES = frozenset({"true", "false", "oo", "zoo", "nan"})
_STRING_ARG_CALLS = frozenset({"Symbol", "Dummy", "Float"})
_STRING_ARG = re.compile(r"[A-Za-z0-9_.+\-]{1,64}")

#: Non-aten call targets the deserializer accepts for symbolic-size arithmetic.
_SYM_OP_NAMES = frozenset(f"{op.__module__}.{op.__name__}" for op in serde._SYM_OPS)


def _refuse(file: str, member: str, why: str) -> InvalidInput:
    return InvalidInput(
        f"'{file}': archive member '{member}' {why}; refused (untrusted models never run code here). "
        "Re-export with torch.export.save from plain tensors and torch operators"
    )


def check_members(names: list[str], file: str) -> None:
    """Every member must be one ``torch.export.save`` writes; the program itself must be present."""
    for name in names:
        if _ALLOWED.fullmatch(name):
            continue
        why = next((w for p, w in _REFUSED if p.fullmatch(name)), "is not part of a torch.export archive")
        raise _refuse(file, name, why)
    if PROGRAM not in names:
        raise InvalidInput(f"'{file}': torch.export archive without '{PROGRAM}'; save it with torch.export.save")


def _int(value: Any, what: str, file: str, member: str) -> int:
    """A ``{"as_int": n}`` field (sizes of stored tensors are never symbolic)."""
    if not (isinstance(value, dict) and isinstance(value.get("as_int"), int)):
        raise _refuse(file, member, f"declares a non-integer {what} ({value!r})")
    return int(value["as_int"])


def _list(value: Any, file: str, member: str) -> list[Any]:
    if not isinstance(value, list):
        raise _refuse(file, member, f"declares a malformed shape ({str(value)[:40]!r})")
    return value


def _check_payload(meta: dict[str, Any], member: str, size: int, file: str) -> None:
    """Declared tensor must lie inside its stored bytes (an empty member would make torch allocate it)."""
    tm = meta.get("tensor_meta")
    if not isinstance(tm, dict):
        raise _refuse(file, member, "has no tensor metadata")
    try:
        dtype = serde._SERIALIZE_TO_TORCH_DTYPE[schema.ScalarType(tm.get("dtype"))]
    except (KeyError, ValueError):
        raise _refuse(file, member, f"declares an unknown dtype {tm.get('dtype')!r}") from None
    sizes = [_int(s, "size", file, member) for s in _list(tm.get("sizes"), file, member)]
    strides = [_int(s, "stride", file, member) for s in _list(tm.get("strides"), file, member)]
    offset = _int(tm.get("storage_offset"), "storage offset", file, member)
    if len(sizes) != len(strides) or min(sizes + strides + [offset], default=0) < 0:
        raise _refuse(file, member, f"declares an invalid layout (sizes {sizes}, strides {strides})")
    if math.prod(sizes) == 0:
        return
    extent = offset + 1 + sum((n - 1) * s for n, s in zip(sizes, strides))
    need = extent * torch.empty((), dtype=dtype).element_size()
    if need > size:
        raise _refuse(file, member, f"holds {size:,} bytes but its tensor (shape {sizes}) needs {need:,}")


def _check_config(
    reader: pkg.PT2ArchiveReader, names: set[str], config: str, directory: str, prefix: str, file: str
) -> None:
    """Every weight/constant must be raw tensor bytes in an existing member: no pickles, no objects."""
    if config not in names:
        raise InvalidInput(f"'{file}': torch.export archive without '{config}'; save it with torch.export.save")
    try:
        entries = json.loads(reader.read_string(config))["config"]
    except (ValueError, KeyError, TypeError, UnicodeDecodeError):
        entries = None
    if not isinstance(entries, dict):
        raise _refuse(file, config, "is not a valid payload config")
    for fqn, meta in entries.items():
        path_name = meta.get("path_name") if isinstance(meta, dict) else None
        member = f"{directory}{path_name}"
        if not isinstance(path_name, str) or not re.fullmatch(rf"{prefix}\d+", path_name):
            why = next((w for p, w in _REFUSED if p.fullmatch(member)), f"is not a raw {prefix}* tensor")
            raise _refuse(file, member, f"(entry '{fqn}' of {config}) {why}")
        if meta.get("use_pickle") is not False:
            raise _refuse(
                file,
                member,
                f"(entry '{fqn}') is a pickle (\"use_pickle\": true in {config}), and unpickling runs code",
            )
        if member not in names:
            raise _refuse(file, config, f"names a missing member '{member}' for '{fqn}'")
        _check_payload(meta, member, reader.archive_file.get_record_size(member), file)


def _sympy_ok(node: ast.AST) -> bool:
    """True for literals and calls of known sympy/torch classes only (what ``sympy.srepr`` writes)."""
    if isinstance(node, ast.Constant):
        return type(node.value) in (int, float, bool)
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, (ast.USub, ast.UAdd)):
        return _sympy_ok(node.operand)
    if isinstance(node, ast.Name):
        return node.id in _SYMPY_NAMES
    if isinstance(node, ast.Tuple):
        return all(_sympy_ok(e) for e in node.elts)
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _SYMPY_CALLS:

        def arg_ok(a: ast.AST) -> bool:
            if isinstance(a, ast.Constant) and isinstance(a.value, str):
                return node.func.id in _STRING_ARG_CALLS and bool(_STRING_ARG.fullmatch(a.value))
            return _sympy_ok(a)

        return all(arg_ok(a) for a in node.args) and all(
            k.arg is not None and isinstance(k.value, ast.Constant) and type(k.value.value) in (bool, int)
            for k in node.keywords
        )
    return False


def check_sym_expr(expr: str) -> bool:
    """Whether ``expr`` is a plain symbolic-shape expression, safe to hand to ``sympy.sympify``."""
    try:
        return _sympy_ok(ast.parse(expr, mode="eval").body)
    except (SyntaxError, ValueError, RecursionError, MemoryError):
        return False


def _check_target(target: str) -> bool:
    if target in _SYM_OP_NAMES:
        return True
    parts = target.split(".")
    return target.startswith("torch.ops.") and all(p and not p.startswith("__") for p in parts)


def check_program(doc: Any, file: str, path: str = "") -> None:
    """Walk ``models/model.json``: symbolic expressions and operator names must be plain."""
    if isinstance(doc, dict):
        for key, value in doc.items():
            where = f"{path}.{key}" if path else key
            if key == "expr_str" and (not isinstance(value, str) or not check_sym_expr(value)):
                raise _refuse(
                    file,
                    PROGRAM,
                    f"holds a symbolic expression that is not plain sympy at "
                    f"{where} ({str(value)[:80]!r}); torch would eval it",
                )
            if key == "target" and "inputs" in doc and (not isinstance(value, str) or not _check_target(value)):
                raise _refuse(
                    file, PROGRAM, f"calls '{str(value)[:80]}' at {where}, which is not a torch operator (torch.ops.*)"
                )
            check_program(value, file, where)
    elif isinstance(doc, list):
        for i, value in enumerate(doc):
            check_program(value, file, f"{path}[{i}]")


def load_exported_program(path: str | Path) -> torch.export.ExportedProgram:
    """The archive's program, built without pickle, ``eval`` or ``exec``; ``InvalidInput`` when refused."""
    file = Path(path).name
    try:
        reader = pkg.PT2ArchiveReader(str(path))
        names = reader.get_file_names()
    except Exception as exc:  # torch's zip reader raises RuntimeError/AssertionError
        raise InvalidInput(
            f"'{file}' is not a torch.export archive this server can read (older torch.export formats are "
            f"not accepted: re-save it with torch.export.save from torch {torch.__version__.split('+')[0]}): {exc}"
        ) from None
    try:
        ep = _checked_load(reader, names, file)
    except InvalidInput:
        raise
    except Exception as exc:  # damaged members and bad programs raise many types
        raise InvalidInput(f"cannot load torch.export program '{file}': {type(exc).__name__}: {exc}") from None
    ep._guards_code = []  # never exec'd (no sample inputs, see below); cleared so no later call compiles it
    return ep


def _checked_load(reader: pkg.PT2ArchiveReader, names: list[str], file: str) -> torch.export.ExportedProgram:
    check_members(names, file)
    version = reader.read_string("archive_version") if "archive_version" in names else "?"
    if version != pkg.ARCHIVE_VERSION_VALUE:
        raise _refuse(file, "archive_version", f"says {version!r}; this server reads {pkg.ARCHIVE_VERSION_VALUE!r}")
    members = set(names)
    _check_config(reader, members, WEIGHTS_CONFIG, "data/weights/", "weight_", file)
    _check_config(reader, members, CONSTANTS_CONFIG, "data/constants/", "tensor_", file)
    program_bytes = reader.read_bytes(PROGRAM)
    try:
        check_program(json.loads(program_bytes), file)
    except (ValueError, RecursionError) as exc:  # UnicodeDecodeError is a ValueError
        raise _refuse(file, PROGRAM, f"is not a valid program ({type(exc).__name__}: {exc})") from None
    program = serde._bytes_to_dataclass(schema.ExportedProgram, program_bytes)
    # Safe now: every entry was checked to be raw tensor bytes (torch's non-pickle path).
    state_dict = pkg._load_state_dict(reader, MODEL)
    constants = pkg._load_constants(reader, MODEL)
    # No sample inputs: they are a pickle, and without them ep.module() compiles no guards code.
    return serde.ExportedProgramDeserializer().deserialize(program, state_dict, constants, None)


__all__ = ["check_members", "check_program", "check_sym_expr", "load_exported_program"]

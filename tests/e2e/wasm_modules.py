"""Tiny proxy-wasm modules for the failure-policy tests, assembled here from their instructions.

No WebAssembly toolchain is needed: the modules are a few functions each, so this writes the
binary format (https://webassembly.github.io/spec/core/binary/) directly. What they are, in WAT:

```wat
(module
  (memory (export "memory") 2)
  (func (export "proxy_abi_version_0_2_1"))
  (func (export "proxy_on_memory_allocate") (param i32) (result i32) (i32.const 1024))
  (func (export "proxy_on_context_create") (param i32 i32))
  (func (export "proxy_on_configure") (param i32 i32) (result i32) (i32.const 1))   ;; or: unreachable
  (func (export "proxy_on_request_headers") (param i32 i32 i32) (result i32)
    unreachable))                                                                    ;; or: (i32.const 0)
```

``unreachable`` traps: the VM is then failed, which is what ``failure_policy`` is about.
"""

from __future__ import annotations

# value types and opcodes
I32 = 0x7F
UNREACHABLE = b"\x00"
END = b"\x0b"


def _uleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)


def _sleb(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        done = (n == 0 and not byte & 0x40) or (n == -1 and byte & 0x40)
        out.append(byte if done else byte | 0x80)
        if done:
            return bytes(out)


def _vec(items: list[bytes]) -> bytes:
    return _uleb(len(items)) + b"".join(items)


def _name(s: str) -> bytes:
    return _vec([bytes([b]) for b in s.encode()])


def _section(section_id: int, payload: bytes) -> bytes:
    return bytes([section_id]) + _uleb(len(payload)) + payload


def i32_const(n: int) -> bytes:
    return b"\x41" + _sleb(n)


def module(functions: list[tuple[str, tuple[int, ...], tuple[int, ...], bytes]], memory_pages: int = 2) -> bytes:
    """A module exporting ``memory`` and each ``(name, params, results, body)`` function; ``body``
    is the instruction bytes (``END`` is appended)."""
    types: list[tuple[tuple[int, ...], tuple[int, ...]]] = []
    for _, params, results, _ in functions:
        if (params, results) not in types:
            types.append((params, results))
    type_section = _vec([b"\x60" + _vec([bytes([p]) for p in ps]) + _vec([bytes([r]) for r in rs]) for ps, rs in types])
    func_section = _vec([_uleb(types.index((ps, rs))) for _, ps, rs, _ in functions])
    memory_section = _vec([b"\x00" + _uleb(memory_pages)])
    exports = [_name("memory") + b"\x02" + _uleb(0)]
    exports += [_name(name) + b"\x00" + _uleb(i) for i, (name, _, _, _) in enumerate(functions)]
    bodies = []
    for _, _, _, body in functions:
        code = _vec([]) + body + END  # no locals
        bodies.append(_uleb(len(code)) + code)
    return (
        b"\x00asm" + (1).to_bytes(4, "little")
        + _section(1, type_section)
        + _section(3, func_section)
        + _section(5, memory_section)
        + _section(7, _vec(exports))
        + _section(10, _vec(bodies))
    )


def proxy_module(trap_in: str | None = None) -> bytes:
    """A proxy-wasm (ABI 0.2.1) HTTP module that lets requests continue, or traps in
    ``trap_in`` (``"proxy_on_request_headers"`` or ``"proxy_on_configure"``)."""

    def body(name: str, normal: bytes) -> bytes:
        return UNREACHABLE if name == trap_in else normal

    return module(
        [
            ("proxy_abi_version_0_2_1", (), (), b""),
            ("proxy_on_memory_allocate", (I32,), (I32,), i32_const(1024)),
            ("proxy_on_context_create", (I32, I32), (), b""),
            ("proxy_on_configure", (I32, I32), (I32,), body("proxy_on_configure", i32_const(1))),
            ("proxy_on_request_headers", (I32, I32, I32), (I32,), body("proxy_on_request_headers", i32_const(0))),
        ]
    )

"""The seccomp filter every sandboxed command runs under (given to bubblewrap with --seccomp).

Namespaces do not cover everything: AF_VSOCK sockets reach the hypervisor and share their port
space with the host whatever the network namespace, the kernel keyring is a store outside the
filesystem, and io_uring can open sockets without the socket() system call. So: sockets only of the
families programs need (Unix, IPv4, IPv6, netlink), no keyring calls, no io_uring, and only the
native system call table (no 32-bit or x32 entry points that would bypass the checks).

Classic BPF, assembled here: it is twenty instructions, and libseccomp's Python bindings are not on
PyPI. x86_64 and aarch64; elsewhere no filter is built and docs/shell.md says so.
"""

from __future__ import annotations

import platform
import struct

_LD_W_ABS, _JEQ, _JGE, _RET = 0x20, 0x15, 0x35, 0x06
_ALLOW = 0x7FFF0000
_ERRNO = 0x00050000
EPERM, ENOSYS, EAFNOSUPPORT = 1, 38, 97
_ALLOWED_FAMILIES = (1, 2, 10, 16)  # AF_UNIX, AF_INET, AF_INET6, AF_NETLINK

# arch: (AUDIT_ARCH value, socket, add_key, request_key, keyctl, io_uring_setup, io_uring_enter, io_uring_register)
_ARCHES = {
    "x86_64": (0xC000003E, 41, 248, 249, 250, 425, 426, 427),
    "aarch64": (0xC00000B7, 198, 217, 218, 219, 425, 426, 427),
}


def filter_program() -> bytes | None:
    """The filter as struct sock_filter[] bytes, or None on an architecture it is not written for."""
    spec = _ARCHES.get(platform.machine())
    if spec is None:
        return None
    arch, socket, *refused = spec
    program: list[tuple[int, int, int, int]] = []

    def op(code: int, k: int, jt: int = 0, jf: int = 0) -> None:
        program.append((code, jt, jf, k))

    op(_LD_W_ABS, 4)                              # seccomp_data.arch
    op(_JEQ, arch, jt=1)
    op(_RET, _ERRNO | ENOSYS)                     # another system call table: refused
    op(_LD_W_ABS, 0)                              # seccomp_data.nr
    op(_JGE, 0x40000000, jt=len(refused) + 3)     # x32 numbers: refused (ENOSYS below)
    op(_JEQ, socket, jt=len(refused) + 3)
    for i, number in enumerate(refused):
        op(_JEQ, number, jt=len(refused) - i)     # to the EPERM return
    op(_RET, _ALLOW)
    op(_RET, _ERRNO | EPERM)
    op(_RET, _ERRNO | ENOSYS)
    # socket(domain, ...): seccomp_data.args[0], low 32 bits
    op(_LD_W_ABS, 16)
    for i, family in enumerate(_ALLOWED_FAMILIES):
        op(_JEQ, family, jt=len(_ALLOWED_FAMILIES) - i)
    op(_RET, _ERRNO | EAFNOSUPPORT)
    op(_RET, _ALLOW)
    return b"".join(struct.pack("=HBBI", *instruction) for instruction in program)

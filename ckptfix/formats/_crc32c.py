"""CRC-32C (Castagnoli), as used by LevelDB tables and TF tensor bundles. No dependencies.

``crc32c`` is a plain table-driven implementation; for buffers larger than a few tens of KiB it
switches to a numpy-vectorised variant (the buffer is cut into equal chunks whose CRCs are
computed side by side, then combined with the GF(2) "shift by L zero bytes" operator), which
gives the same result hundreds of times faster than the byte loop.
"""

from __future__ import annotations

_POLY = 0x82F63B78  # reflected Castagnoli polynomial
_MASK_DELTA = 0xA282EAD8


def _make_table() -> list[int]:
    table = []
    for n in range(256):
        c = n
        for _ in range(8):
            c = (c >> 1) ^ _POLY if c & 1 else c >> 1
        table.append(c)
    return table


TABLE = _make_table()
_NP_TABLE = None
_VECTOR_MIN = 1 << 15


def _raw(data, reg: int) -> int:
    """Register after feeding ``data`` starting from ``reg`` (no pre/post inversion)."""
    t = TABLE
    for b in data:
        reg = t[(reg ^ b) & 0xFF] ^ (reg >> 8)
    return reg


# ---- GF(2) operators: an operator is a list of 32 column images (image of bit i) ----

def _apply(op: list[int], x: int) -> int:
    r = 0
    i = 0
    while x:
        if x & 1:
            r ^= op[i]
        x >>= 1
        i += 1
    return r


def _compose(a: list[int], b: list[int]) -> list[int]:
    """Operator ``a ∘ b`` (apply b, then a)."""
    return [_apply(a, col) for col in b]


def _zeros_op(nbytes: int) -> list[int]:
    """Operator that feeds ``nbytes`` zero bytes into the register."""
    # one zero byte: reg -> T[reg & 0xff] ^ (reg >> 8)
    one = [_raw(b"\x00", 1 << i) for i in range(32)]
    result = [1 << i for i in range(32)]  # identity
    power = one
    n = nbytes
    while n:
        if n & 1:
            result = _compose(power, result)
        n >>= 1
        if n:
            power = _compose(power, power)
    return result


def _vector_raw_zero_init(buf) -> int:
    """Raw register of ``buf`` fed from register 0, vectorised with numpy."""
    import numpy as np

    global _NP_TABLE
    if _NP_TABLE is None:
        _NP_TABLE = np.array(TABLE, dtype=np.uint32)
    table = _NP_TABLE
    data = np.frombuffer(buf, dtype=np.uint8)
    n = data.size
    # chunk length L, K chunks; zero-pad at the front (zeros fed into a zero register keep it 0)
    length = max(256, int((n / 64) ** 0.5) * 8)
    k = -(-n // length)
    pad = k * length - n
    if pad:
        data = np.concatenate([np.zeros(pad, dtype=np.uint8), data])
    cols = np.ascontiguousarray(data.reshape(k, length).T)  # cols[j] = byte j of every chunk
    reg = np.zeros(k, dtype=np.uint32)
    for j in range(length):
        reg = table[(reg ^ cols[j]) & 0xFF] ^ (reg >> 8)
    # combine: R = shift_L(R) ^ r_i, with shift_L done through four byte tables
    op = _zeros_op(length)
    bt = []
    for byte in range(4):
        bt.append([_apply(op, v << (8 * byte)) for v in range(256)])
    t0, t1, t2, t3 = bt
    total = 0
    for r in reg.tolist():
        total = (t0[total & 0xFF] ^ t1[(total >> 8) & 0xFF] ^ t2[(total >> 16) & 0xFF]
                 ^ t3[total >> 24]) ^ r
    return total


def crc32c(data, crc: int = 0) -> int:
    """CRC-32C of ``data`` (bytes-like), continuing from a previous ``crc`` value."""
    mv = memoryview(data).cast("B")
    n = mv.nbytes
    reg = crc ^ 0xFFFFFFFF
    if n < _VECTOR_MIN:
        return _raw(mv, reg) ^ 0xFFFFFFFF
    # raw(data, reg) = shift_n(reg) ^ raw(data, 0)
    return (_apply(_zeros_op(n), reg) ^ _vector_raw_zero_init(mv)) ^ 0xFFFFFFFF


def mask(crc: int) -> int:
    return (((crc >> 15) | (crc << 17)) + _MASK_DELTA) & 0xFFFFFFFF


def unmask(masked: int) -> int:
    rot = (masked - _MASK_DELTA) & 0xFFFFFFFF
    return ((rot >> 17) | (rot << 15)) & 0xFFFFFFFF


def masked_crc32c(data) -> int:
    return mask(crc32c(data))

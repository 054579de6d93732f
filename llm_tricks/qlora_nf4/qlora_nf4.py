"""QLoRA's storage format in plain PyTorch: NF4 codes, blockwise absmax, double quantisation.

Dettmers et al. (2023), "QLoRA: Efficient Finetuning of Quantized LLMs", arXiv:2305.14314, section 3.

1. NF4 code book. Pretrained weights are close to normal, so the 16 levels are placed at quantiles
   of N(0, 1): each level then gets about the same share of the weights. Seven negative and eight
   positive quantiles, plus an exact zero (padding and zero weights stay exact), scaled to [-1, 1].
2. Blockwise absmax. Each block of 64 consecutive weights is divided by its largest |w|, so it
   lands in [-1, 1], and every weight becomes the index (4 bits) of the nearest level. One outlier
   only costs precision in its own block. Two indices are packed per byte, the first in the high nibble.
3. Double quantisation. One fp32 absmax per 64 weights is 0.5 bit per weight. QLoRA quantises these
   constants again: subtract their mean (they are all positive, the 8-bit code book is signed),
   then 8-bit blockwise quantisation in blocks of 256 with bitsandbytes' "dynamic" code book,
   which leaves 8/64 + 32/(64*256) = 0.127 bit per weight.

Everything here reproduces `bitsandbytes.functional.quantize_4bit` / `dequantize_4bit`
(quant_type="nf4", blocksize=64, compress_statistics False or True) exactly: same integer codes,
same dequantised values. That is the content of tests/llm_tricks/test_qlora_nf4.py.
"""

from dataclasses import dataclass

import torch

NF4_OFFSET = 0.9677083  # 1 - (1/(2*15) + 1/(2*16)) / 2: the outermost quantile, see nf4_code_book


def nf4_code_book(offset: float = NF4_OFFSET) -> torch.Tensor:
    """The 16 NF4 levels, derived from normal quantiles (sorted, float32).

    The quantile probabilities run from 1 - offset to offset rather than 0 to 1, because the normal
    quantile of 0 or 1 is infinite. QLoRA picks the offset halfway between the choices that suit a
    15-level and a 16-level grid. bitsandbytes builds the grid with `torch.linspace` in float32 and
    `scipy.stats.norm.ppf` in float64; `torch.special.ndtri` is the same inverse normal CDF.
    """
    ppf = torch.special.ndtri
    positive = ppf(torch.linspace(offset, 0.5, 9)[:-1].double())  # 8 levels > 0 (0.5 is the zero)
    negative = -ppf(torch.linspace(offset, 0.5, 8)[:-1].double())  # 7 levels < 0: asymmetric, zero is exact
    values = torch.cat([negative, torch.zeros(1, dtype=torch.float64), positive]).float()
    values = values.sort().values
    return values / values.max()


def dynamic_code_book() -> torch.Tensor:
    """bitsandbytes' signed 8-bit "dynamic" code book (Dettmers 2015, arXiv:1511.04561), sorted.

    A dynamic-exponent format: for exponents 10^-6 ... 10^0, the interval [0.1, 1] * 10^e is cut
    into 2^e' linearly spaced bins (more bins for larger e), and the bin midpoints are the levels,
    both signs; plus 0 and 1. It covers 7 orders of magnitude with 256 values.
    """
    data = []
    for i in range(7):  # exponent 10^(i - 6), 2^i linear bins in [0.1, 1]
        bounds = torch.linspace(0.1, 1, 2**i + 1, dtype=torch.float32)
        means = (bounds[:-1] + bounds[1:]) / 2.0
        data += ((10 ** (i - 6)) * means).tolist() + (-(10 ** (i - 6)) * means).tolist()  # float32 products
    data += [0.0, 1.0]  # 2 * (1 + 2 + ... + 64) + 2 = 256 levels
    return torch.tensor(sorted(data), dtype=torch.float32)


def _absmax_scale(flat: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Split into blocks, return (values / block absmax clamped to [-1, 1], absmax per block).

    Written the way bitsandbytes' reference kernel computes it, so results agree bit for bit:
    full blocks multiply by 1/absmax, the short last block (if any) divides by its absmax.
    """
    n = flat.numel()
    full = n - n % blocksize
    head = flat[:full].view(-1, blocksize)
    absmax = head.abs().amax(dim=1)
    scaled = torch.clamp(head * (1.0 / absmax.clamp(min=1e-38)).unsqueeze(1), -1, 1).reshape(-1)
    if full < n:
        tail_max = flat[full:].abs().max().clamp(min=1e-38)
        absmax = torch.cat([absmax, tail_max.view(1)])
        scaled = torch.cat([scaled, torch.clamp(flat[full:] / tail_max, -1, 1)])
    return scaled, absmax


def quantize_blockwise(x: torch.Tensor, code: torch.Tensor, blocksize: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Absmax-scale each block of `blocksize` values to [-1, 1] and store the index of the nearest level.

    Returns (indices as uint8, absmax per block as float32). The last block may be shorter.
    "Nearest" is decided against the midpoints between sorted levels, ties going to the lower level.
    This is how bitsandbytes quantises to NF4.
    """
    scaled, absmax = _absmax_scale(x.reshape(-1).float(), blocksize)
    midpoints = (code[:-1] + code[1:]) / 2
    return torch.bucketize(scaled, midpoints).to(torch.uint8).view(x.shape), absmax


def quantize_blockwise_lut(x: torch.Tensor, code: torch.Tensor, blocksize: int, bins: int = 65536):
    """The same, the way bitsandbytes' *CPU* 8-bit kernel does it (used for the double quantisation).

    Instead of searching the nearest level for every value, that kernel precomputes a table: [-1, 1]
    is cut into 65536 grid points, each mapped once to its nearest level; a value is rounded to the
    closest grid point and looked up. Values within half a grid step (1.5e-5) of a midpoint between
    two levels can therefore land on the farther level. We reproduce it to match the codes exactly.
    """
    flat = x.reshape(-1).float()
    n = flat.numel()
    blocks = torch.nn.functional.pad(flat, (0, (-n) % blocksize)).view(-1, blocksize)
    absmax = blocks.abs().amax(dim=1)  # the zero padding never changes a max of absolute values
    scaled = (blocks * (1.0 / absmax).unsqueeze(1)).reshape(-1)[:n]
    grid = -1.0 + (2.0 * torch.arange(bins, dtype=torch.float32)) / (bins - 1)
    midpoints = 0.5 * (code[:-1] + code[1:])
    table = torch.searchsorted(midpoints, grid).to(torch.uint8)  # nearest level of every grid point
    grid_index = ((torch.clamp(scaled, -1, 1) + 1.0) * 0.5 * (bins - 1) + 0.5).to(torch.int64)  # round
    return table[grid_index].view(x.shape), absmax


def dequantize_blockwise(indices: torch.Tensor, absmax: torch.Tensor, code: torch.Tensor, blocksize: int):
    """Look the levels up and multiply each block by its absmax."""
    values = code[indices.reshape(-1).long()]
    n = values.numel()
    scale = absmax.repeat_interleave(blocksize)[:n]
    return (values * scale).view(indices.shape)


def pack_4bit(indices: torch.Tensor, pad_index: int = 7) -> torch.Tensor:
    """Two 4-bit indices per byte, first one in the high nibble; shape (ceil(n/2), 1) like bitsandbytes.

    An odd count leaves half a byte; bitsandbytes fills it with the code of 0.0, which is NF4 index 7.
    """
    flat = indices.reshape(-1).to(torch.uint8)
    if flat.numel() % 2:
        flat = torch.cat([flat, flat.new_full((1,), pad_index)])
    return ((flat[0::2] << 4) | flat[1::2]).unsqueeze(1)


def unpack_4bit(packed: torch.Tensor, n: int) -> torch.Tensor:
    flat = packed.reshape(-1)
    return torch.stack([flat >> 4, flat & 0xF], dim=1).reshape(-1)[:n]


@dataclass
class NF4Tensor:
    """What QLoRA keeps in memory for one weight matrix."""

    packed: torch.Tensor  # uint8, two NF4 indices per byte
    shape: torch.Size
    blocksize: int
    absmax: torch.Tensor | None = None  # fp32 per block (no double quantisation)
    absmax_indices: torch.Tensor | None = None  # uint8 per block (double quantisation)
    absmax_absmax: torch.Tensor | None = None  # fp32 per 256 blocks
    absmax_offset: torch.Tensor | None = None  # fp32 scalar: the mean subtracted before quantising
    blocksize2: int = 256


def quantize_nf4(w: torch.Tensor, blocksize: int = 64, double_quant: bool = False, blocksize2: int = 256) -> NF4Tensor:
    indices, absmax = quantize_blockwise(w, nf4_code_book(), blocksize)
    q = NF4Tensor(packed=pack_4bit(indices), shape=w.shape, blocksize=blocksize, blocksize2=blocksize2)
    if not double_quant:
        q.absmax = absmax
        return q
    q.absmax_offset = absmax.mean()  # absmax > 0: centre it so the signed 8-bit code book is used fully
    centred = absmax - q.absmax_offset
    q.absmax_indices, q.absmax_absmax = quantize_blockwise_lut(centred, dynamic_code_book(), blocksize2)
    return q


def dequantize_nf4(q: NF4Tensor) -> torch.Tensor:
    if q.absmax is not None:
        absmax = q.absmax
    else:
        absmax = dequantize_blockwise(q.absmax_indices, q.absmax_absmax, dynamic_code_book(), q.blocksize2)
        absmax = absmax + q.absmax_offset
    n = q.shape.numel()
    return dequantize_blockwise(unpack_4bit(q.packed, n), absmax, nf4_code_book(), q.blocksize).view(q.shape)


def bits_per_parameter(blocksize: int = 64, double_quant: bool = True, blocksize2: int = 256) -> float:
    """Storage per weight: 4 bits + the share of the block constants (ignoring one offset per tensor)."""
    if not double_quant:
        return 4 + 32 / blocksize
    return 4 + 8 / blocksize + 32 / (blocksize * blocksize2)


def weight_memory_gb(n_params: float, bits: float) -> float:
    """Decimal gigabytes for n_params weights at `bits` bits each."""
    return n_params * bits / 8 / 1e9

"""NF4 + blockwise absmax + double quantisation == bitsandbytes quantize_4bit / dequantize_4bit on CPU, bit for bit."""

import bitsandbytes.functional as bnbF
import pytest
import torch

from llm_tricks.qlora_nf4.qlora_nf4 import (
    bits_per_parameter,
    dequantize_nf4,
    dynamic_code_book,
    nf4_code_book,
    quantize_blockwise,
    quantize_blockwise_lut,
    quantize_nf4,
    unpack_4bit,
)

SHAPES = [(64, 64), (300, 70), (129, 33), (5, 3, 64), (40000,)]  # (129, 33): odd count and a short last block


def test_nf4_code_book_derived_from_normal_quantiles_equals_bitsandbytes_table():
    ours = nf4_code_book()
    assert torch.equal(ours, bnbF.get_4bit_type("nf4", device="cpu"))  # exactly, all 16 float32 values
    assert ours[7] == 0 and ours[0] == -1 and ours[-1] == 1 and (ours.diff() > 0).all()


def test_dynamic_8bit_code_book_equals_bitsandbytes():
    assert torch.equal(dynamic_code_book(), bnbF.create_dynamic_map())


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("compress_statistics", [False, True])
def test_codes_and_dequantised_values_identical_to_bitsandbytes(shape, compress_statistics):
    w = torch.randn(shape) * 0.02
    w.view(-1)[torch.randint(w.numel(), (3,))] *= 50  # a few outliers, as in real weights
    q_ref, state = bnbF.quantize_4bit(w, blocksize=64, quant_type="nf4", compress_statistics=compress_statistics)
    ours = quantize_nf4(w, blocksize=64, double_quant=compress_statistics)
    assert torch.equal(ours.packed, q_ref)  # the packed 4-bit codes, byte for byte
    if compress_statistics:
        assert torch.equal(ours.absmax_indices, state.absmax)  # 8-bit codes of the absmax constants
        assert torch.equal(ours.absmax_absmax, state.state2.absmax)  # their fp32 scales, one per 256 blocks
        assert ours.absmax_offset.item() == state.offset.item()  # the mean that was subtracted
        assert state.state2.blocksize == 256
    else:
        assert torch.equal(ours.absmax, state.absmax)
    deq_ref = bnbF.dequantize_4bit(q_ref, state)  # bitsandbytes returns (1, n) for 1-D input
    assert torch.equal(dequantize_nf4(ours), deq_ref.view(shape))


def test_blockwise_absmax_bounds_the_error_per_block():
    w = torch.randn(4096)
    indices, absmax = quantize_blockwise(w, nf4_code_book(), 64)
    deq = dequantize_nf4(quantize_nf4(w))
    err = (deq - w).abs().view(-1, 64).amax(dim=1)
    widest_gap = nf4_code_book().diff().max()  # the coarsest spacing of the grid, at the tails
    assert (err <= absmax * widest_gap / 2 + 1e-7).all()  # never more than half a gap, scaled per block
    assert torch.equal(unpack_4bit(quantize_nf4(w).packed, w.numel()), indices.view(-1))


def test_nf4_beats_a_uniform_4bit_grid_on_normal_weights():
    """The point of NF4: for normal data, quantiles waste fewer levels on empty tails than a uniform grid."""
    w = torch.randn(64 * 512)
    uniform = torch.linspace(-1, 1, 16)
    err_nf4 = (dequantize_nf4(quantize_nf4(w)) - w).pow(2).mean()
    idx, absmax = quantize_blockwise(w, uniform, 64)
    err_uniform = ((uniform[idx.long()] * absmax.repeat_interleave(64)) - w).pow(2).mean()
    assert err_nf4 < 0.9 * err_uniform  # measured ratio about 0.84 (see README)


@pytest.mark.parametrize("compress_statistics", [False, True])
def test_bits_per_parameter_matches_what_bitsandbytes_stores(compress_statistics):
    n = 64 * 256 * 8
    q, state = bnbF.quantize_4bit(
        torch.randn(n), blocksize=64, quant_type="nf4", compress_statistics=compress_statistics
    )
    stored = q.numel() * q.element_size() + state.absmax.numel() * state.absmax.element_size()
    if compress_statistics:
        stored += state.state2.absmax.numel() * state.state2.absmax.element_size() + 4  # + the fp32 offset
    expected = bits_per_parameter(64, double_quant=compress_statistics)
    assert 8 * stored / n == pytest.approx(expected + (32 / n if compress_statistics else 0), abs=1e-12)
    assert bits_per_parameter(64, False) == 4.5 and round(bits_per_parameter(64, True) - 4, 3) == 0.127


def test_cpu_8bit_kernel_is_a_lookup_table_and_we_reproduce_it():
    """Double quantisation goes through bitsandbytes' CPU 8-bit kernel, which rounds through a 65536-point grid."""
    a = torch.rand(100_000) * torch.rand(100_000) * 3 - 0.5
    q_ref, state = bnbF.quantize_blockwise(a, blocksize=256)  # dynamic code book by default
    ours, absmax = quantize_blockwise_lut(a, dynamic_code_book(), 256)
    assert torch.equal(ours, q_ref) and torch.equal(absmax, state.absmax)
    code = dynamic_code_book()
    nearest, _ = quantize_blockwise(a, code, 256)
    differ = nearest != q_ref
    assert differ.any()  # exact nearest rounding is *not* what the CPU kernel does ...
    scaled = (a / absmax.repeat_interleave(256)[: a.numel()])[differ]
    extra = (code[q_ref[differ].long()] - scaled).abs() - (code[nearest[differ].long()] - scaled).abs()
    assert (extra >= 0).all() and (extra <= 2 / 65535).all()  # ... it is off by at most one grid step

"""Operators the mixers call, kept apart from the layers (mamba_ssm's `ops/` beside `modules/`); each
pairs a fast path with the pure reference it is tested against.

    selective_scan.py   Mamba's scan: the literal recurrence, the chunked CPU scan with its backward,
                        and the probe of mamba_ssm's fused CUDA kernels
    selective_scan_cpu.py   the same scan compiled for the CPU (numba): a loop over time per batch and
                        channel, forward and backward, never a (B, L, E, N) tensor

Import from the module itself (`from bench.models.ops.selective_scan import selective_scan`): this
package re-exports nothing, so a module and the function it is named after never shadow each other.
"""

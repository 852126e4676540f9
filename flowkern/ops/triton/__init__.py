"""Triton kernels for the fused ops (CUDA tensors; CPU tensors under TRITON_INTERPRET=1).
Imported lazily by flowkern.ops, so flowkern works without triton installed."""

"""Measure the two ceilings of METHOD.md on this GPU: a bf16 matrix product and a device copy."""

import torch
import triton.testing


def main():
    n = 8192
    a, b = (torch.randn(n, n, device="cuda", dtype=torch.bfloat16) for _ in range(2))
    ms = triton.testing.do_bench(lambda: a @ b, warmup=50, rep=300, return_mode="median")
    print(f"bf16 matmul {n}^3: {2 * n**3 / ms / 1e9:.0f} TFLOP/s ({ms:.3f} ms)")
    x = torch.randn(2**29 // 2, device="cuda", dtype=torch.float32)   # 1 GiB
    y = torch.empty_like(x)
    ms = triton.testing.do_bench(lambda: y.copy_(x), warmup=50, rep=300, return_mode="median")
    print(f"device copy 1 GiB: {2 * x.numel() * 4 / ms / 1e6:.0f} GB/s read+write ({ms:.3f} ms)")


if __name__ == "__main__":
    main()

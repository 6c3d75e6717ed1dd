"""The two ceilings the floors are measured against: a bf16 matrix product and a device copy.

TFLOPS and TBPS are their values measured on the H100 (bench/NOTES.md, "Ceilings"); the floors
of the suites (`floor_ms`) and of tools/profile_mlstm.py use them.
`python -m bench.harness.ceilings` measures them on this GPU (bench/device.sh with CEILINGS=1).
"""

TFLOPS = 756e12     # bf16 matmul 8192^3, FLOP/s
TBPS = 3.0e12       # device copy of 1 GiB, bytes/s counting read + write (the HBM rate)


def main():
    import torch
    import triton.testing

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

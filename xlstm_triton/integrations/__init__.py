"""Integrations with other libraries. `xlstm_triton.integrations.transformers`: run Hugging
Face `transformers` xLSTM models (xLSTM-7B) on xlstm-triton's kernels (imports nothing from
transformers itself); `xlstm_triton.integrations.tirex`: run TiRex's sLSTM cells on the
`slstm` op (imports nothing from tirex)."""

"""Integrations with other libraries. `xlstm_triton.integrations.transformers`: run Hugging
Face `transformers` xLSTM models (xLSTM-7B) on xlstm-triton's kernels (imports nothing from
transformers itself)."""

"""Evaluation: one scoring core (`scoring`) and a module per task kind.

- `perplexity`: HF's strided protocol and llama.cpp's (windows of 512, second half scored).
- `choice`: multiple choice by log-likelihood, lm-eval's acc / acc_norm.
- `needle`: passkey and needle-in-a-haystack accuracy grids (length × depth).
- `harness`: herd as an lm-evaluation-harness model (imports lm_eval; used by `herd eval lm-eval`).
"""

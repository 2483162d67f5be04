"""Model loading, prompt building and generation.

Importing this package (or its torch-free modules: params, types, presence)
never imports torch, so the web process can validate parameters and check on
workers without loading the model stack.
"""

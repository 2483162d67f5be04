"""The generation engine: one model copy serving many conversations at once.

- `config`: EngineConfig, the one place the engine's settings and their
  defaults live (no torch: the site's settings read it).
- `scheduler`: what each pass runs, decided without a model (pure Python).
- `core`: Engine, the thread that executes the scheduler's plans on the model.
- `kv`, `prefix_cache`: KV rows and the KV blocks shared by common prefixes.
- `sampler`, `detokenizer`: logits to tokens, tokens to streamed text.

The model's maths is in inference/model/, which knows nothing of this package.
"""

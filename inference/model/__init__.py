"""The model's maths: a lean forward pass over a loaded Llama-family model and its weight storage.

Imports nothing from the engine that schedules it.
"""

"""Model graphs that call our kernels: the Relax Llama (``llama``), its configs and presets (``config``),
low-bit layer swapping (``quantize``), building libraries (``builder``) and running them (``engine``).
"""

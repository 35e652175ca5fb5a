"""Model graphs that call our kernels: the Relax Llama (``llama``), its configs and presets (``config``),
linear layers (``fp_linear``, ``w4a16_linear``, scheduled per ``rows_hint``), low-bit layer swapping
(``quantize``), building libraries (``builder``, ``recipe``) and running them (``engine``); real weights and
text (``gguf_weights``, ``checkpoints``, ``corpus``, ``perplexity``, ``hf_reference``).
"""

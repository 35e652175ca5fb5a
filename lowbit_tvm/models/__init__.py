"""Model graphs that call our kernels (the Relax Llama lands here with the end-to-end issue)."""

